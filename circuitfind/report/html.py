"""The report page: one self-contained HTML file (no network: styles, script, data and images
inline) with the task and its prompts, the interactive circuit, the figures, the tables and the
provenance.

The circuit is drawn in the browser from the stored scores: the slider picks the number of top
|score| edges (of top nodes, for node scores) and the page removes dangling edges exactly as
`prune` does, so the drawn circuit at the slider's starting value is the run's circuit. Every string
from a task or a tokenizer goes through `html.escape` or into a JSON block whose `<` are escaped, and
the script inserts text with `textContent` only, so a prompt such as `<script>` is shown, never run.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from circuitfind.prune import node_order
from circuitfind.report.layout import node_positions
from circuitfind.report.tables import SUMMARY_COLUMNS, summary_rows, top_header, top_rows

MAX_SLIDER_EDGES = 2000  # edges stored in the page for the slider (the top ones by |score|)

STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border-bottom:1px solid #e5e5e5;padding:.25em .6em;text-align:left}
th{background:#f6f6f6}code,.mono{font-family:Menlo,Consolas,monospace;font-size:.9em;white-space:pre-wrap}
.row{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}#circuit{border:1px solid #ddd;background:#fcfcfc}
#panel{min-width:260px;max-width:340px;font-size:.85em}.edge{cursor:pointer}.node{cursor:pointer}
.figs img{max-width:48%;margin:.3em}.muted{color:#777}#hover{min-height:1.3em;font-size:.85em}
"""

SCRIPT = r"""
(function(){
const D = JSON.parse(document.getElementById('report-data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const svg = document.getElementById('circuit');
const slider = document.getElementById('n-edges');
const S = D.senders.length;
function el(tag, attrs){const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);return e;}
// Top-k edges by |score| (D.edges is sorted so), or for node scores every edge among the top-k nodes,
// then dangling edges removed as circuitfind.prune does.
function prune(k){
  return withoutDangling(D.level==='node' ? amongTopNodes(k) : D.edges.slice(0,k));
}
function amongTopNodes(k){
  const keep = new Array(S).fill(false); for(const s of D.nodeOrder.slice(0,k)) keep[s]=true;
  const kept = [];
  D.receivers.forEach((_, r)=>{ const n=D.receiverNode[r]; if(n>=0 && !keep[n]) return;
    for(let s=0;s<D.reads[r];s++) if(keep[s]) kept.push([r,s,D.nodeScore[s]]); });
  return kept;
}
function withoutDangling(kept){
  const reached = new Array(S).fill(false); reached[0] = true;
  const bySender = new Map();
  for(const e of kept){ const n=D.receiverNode[e[0]]; if(!bySender.has(n)) bySender.set(n,[]); bySender.get(n).push(e); }
  for(let s=1;s<S;s++){ const ins=bySender.get(s)||[]; reached[s]=ins.some(e=>reached[e[1]]); }
  const useful = new Array(S).fill(false);
  const outs = new Map(); for(const e of kept){ if(!outs.has(e[1])) outs.set(e[1],[]); outs.get(e[1]).push(e); }
  for(let s=S-1;s>=0;s--){ for(const e of (outs.get(s)||[])){ const n=D.receiverNode[e[0]]; if(n<0||useful[n]){useful[s]=true;break;} } }
  return kept.filter(e=>{ const n=D.receiverNode[e[0]]; return reached[e[1]] && (n<0 || (useful[n] && reached[n])); });
}
const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height, rows = D.rows;
function xy(name){ const p=D.pos[name]; return [30+p[0]*(W-60), H-20-p[1]*(H-40)/(rows-1)]; }
function colour(s, top){ const a=(0.25+0.75*Math.min(1,Math.abs(s)/top)).toFixed(3); return s>=0?`rgba(204,38,25,${a})`:`rgba(26,77,204,${a})`; }
const dash = {q:'5,3', k:'1.5,2', v:'', '':'', in:'', router:'5,3'};
function draw(){
  const k = parseInt(slider.value);
  const edges = prune(k);
  while(svg.firstChild) svg.removeChild(svg.firstChild);
  const top = Math.max(1e-12, ...edges.map(e=>Math.abs(e[2])));
  const used = new Set();
  const gEdges = el('g',{id:'edges'}); svg.appendChild(gEdges);
  for(const e of edges.slice().reverse()){
    const src = D.senders[e[1]], rname = D.receivers[e[0]];
    const node = D.receiverNode[e[0]]<0 ? 'logits' : D.senders[D.receiverNode[e[0]]];
    const kind = rname.endsWith('>') ? rname.slice(rname.indexOf('<')+1,-1) : '';  // q k v, or an expert's in / router
    used.add(src); used.add(node);
    const [x0,y0]=xy(src), [x1,y1]=xy(node);
    // bent like the figure: control point off the chord, more the more rows the edge skips
    const skip = Math.abs(D.pos[node][1]-D.pos[src][1]), rad = (skip<=1 ? 0 : Math.min(0.5, 0.08*skip)) + ({q:-0.15,k:0.15,router:-0.15}[kind]||0);
    const cx = (x0+x1)/2 + rad*(y1-y0), cy = (y0+y1)/2 - rad*(x1-x0);
    const line = el('path',{d:`M${x0},${y0} Q${cx},${cy} ${x1},${y1}`,fill:'none',class:'edge','stroke':colour(e[2],top),
      'stroke-width':(0.6+3*Math.abs(e[2])/top).toFixed(2),'stroke-dasharray':dash[kind],'data-edge':src+'->'+rname});
    const t = el('title',{}); t.textContent = `${src}->${rname}  score ${e[2].toPrecision(4)}`;
    if(e.length>3){  // the bootstrap's interval, and how often the edge is in a resample's circuit (its opacity)
      t.textContent += `  [${e[3].toPrecision(3)}, ${e[4].toPrecision(3)}]`;
      if(e[5]>=0){ t.textContent += `  in ${(100*e[5]).toFixed(0)}% of resampled circuits`; line.setAttribute('stroke-opacity',(0.1+0.9*e[5]).toFixed(2)); }
    }
    line.appendChild(t);
    line.addEventListener('mouseenter',()=>{document.getElementById('hover').textContent=t.textContent;});
    gEdges.appendChild(line);
  }
  const gNodes = el('g',{id:'nodes'}); svg.appendChild(gNodes);
  for(const n of used){
    const [x,y]=xy(n); const g=el('g',{class:'node','data-node':n});
    const box = /^(m\d+|input|logits)$/.test(n);
    g.appendChild(box? el('rect',{x:x-22,y:y-8,width:44,height:16,rx:3,fill:'#f2e6c9',stroke:'#333'})
                     : el('ellipse',{cx:x,cy:y,rx:22,ry:9,fill:'#d9e8f5',stroke:'#333'}));
    const label=el('text',{x:x,y:y+3.5,'text-anchor':'middle','font-size':'10'}); label.textContent=n; g.appendChild(label);
    g.addEventListener('click',()=>showNode(n)); gNodes.appendChild(g);
  }
  const chosen = D.level==='node' ? `the edges among the top ${k} nodes` : `top ${k} by |score|`;
  document.getElementById('edge-count').textContent =
    `${edges.length} edges drawn (${chosen}, dangling edges removed) of ${D.nEdgesTotal}`;
}
function cell(tr, text, tag){ const c=document.createElement(tag||'td'); c.textContent=text; tr.appendChild(c); }
function showNode(n){
  const p = document.getElementById('node-info'); p.replaceChildren();
  const h = document.createElement('h3'); h.textContent = n; p.appendChild(h);
  const L = D.lens[n];
  if(!L){ const m=document.createElement('p'); m.textContent='No logit lens for this node.'; p.appendChild(m); return; }
  const de=document.createElement('p'); de.textContent=`direct effect on the answer: ${L.direct_effect.toPrecision(4)}`; p.appendChild(de);
  for(const [title, list] of [['promotes',L.promoted],['suppresses',L.suppressed]]){
    const t=document.createElement('table'); const hr=document.createElement('tr'); cell(hr,title,'th'); cell(hr,'logit','th'); t.appendChild(hr);
    for(const [tok,v] of list){ const tr=document.createElement('tr'); cell(tr,JSON.stringify(tok)); cell(tr,v.toFixed(3)); t.appendChild(tr); }
    p.appendChild(t);
  }
  const t=document.createElement('table'); const hr=document.createElement('tr'); cell(hr,'top examples','th'); cell(hr,'effect','th'); t.appendChild(hr);
  for(const [i,v] of L.top_examples){ const tr=document.createElement('tr'); cell(tr,(D.examples[i]||{}).clean||`#${i}`); cell(tr,v.toFixed(3)); t.appendChild(tr); }
  p.appendChild(t);
}
slider.addEventListener('input', draw);
draw();
})();
"""

FLOW_SCRIPT = r"""
(function(){
const F = JSON.parse(document.getElementById('report-data').textContent).tokenFlow;
if(!F) return;
const NS = 'http://www.w3.org/2000/svg', svg = document.getElementById('token-flow');
const tau = document.getElementById('flow-tau'), info = document.getElementById('flow-info');
const T = F.tokens.length, R = 2*F.n_layers+1, W = +svg.getAttribute('width'), H = +svg.getAttribute('height');
const x = t => 40 + (W-60)*(t+0.5)/T, y = r => H-40 - (H-70)*r/(R-1);
function el(tag, attrs){const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);return e;}
// the graph at τ, pruned as circuitfind.inspect.flow prunes it: top-down, an edge kept when its weight ≥ τ and it
// feeds a state already kept (the page holds the graph at a lower τ, of which every higher τ's is a part)
function prune(t){
  const kept = new Set([(R-1)+','+F.position]), edges = [];
  const order = F.edges.slice().sort((a,b)=>b.rows[1]-a.rows[1]);
  for(const e of order){ if(e.weight>=t && kept.has(e.rows[1]+','+e.dst)){ edges.push(e); kept.add(e.rows[0]+','+e.src); } }
  return [edges, kept];
}
function show(key){
  const [r,t] = key.split(',').map(Number), lens = F.lens[key];
  info.textContent = '';
  const h = document.createElement('h3');
  h.textContent = `${r===0?'embedding':(r%2?'after attention':'after the FFN')} of layer ${r===0?'–':Math.floor((r-1)/2)}, token ${F.tokens[t]} (${t})`;
  info.appendChild(h);
  for(const [label, rows] of [['promotes', lens?lens.up:[]], ['suppresses', lens?lens.down:[]]]){
    const p = document.createElement('p'); p.textContent = label+': '+rows.map(([w,v])=>`${w} (${v})`).join(', '); info.appendChild(p);
  }
}
function draw(){
  while(svg.firstChild) svg.removeChild(svg.firstChild);
  const [edges, kept] = prune(+tau.value);
  document.getElementById('flow-count').textContent = `τ = ${(+tau.value).toFixed(2)}: ${edges.length} edges, ${kept.size} states`;
  F.tokens.forEach((w,t)=>{ const lab = el('text',{x:x(t),y:H-8,'font-size':10,'text-anchor':'middle'}); lab.textContent = w; svg.appendChild(lab); });
  for(const e of edges){
    const [r0,r1] = e.rows, off = e.kind==='ffn' ? 5 : 0;
    const colour = e.kind==='attn' ? '#3b6fb6' : (e.kind==='ffn' ? '#e08a1e' : '#999999');
    const line = el('line',{x1:x(e.src)+off,y1:y(r0),x2:x(e.dst)+off,y2:y(r1),stroke:colour,'stroke-width':(0.5+5*e.weight).toFixed(2),
                            'stroke-opacity':0.8,class:'flow-edge'});
    const t = el('title',{});
    t.textContent = `layer ${e.layer} ${e.kind} ${F.tokens[e.src]} → ${F.tokens[e.dst]}: ${e.weight.toFixed(3)}` +
      (e.heads.length ? '  heads ' + e.heads.slice(0,4).map(([h,s])=>`a${e.layer}.h${h} ${(100*s).toFixed(0)}%`).join(', ') : '');
    line.appendChild(t); svg.appendChild(line);
  }
  for(const key of kept){
    const [r,t] = key.split(',').map(Number);
    const c = el('circle',{cx:x(t),cy:y(r),r:4,fill:'#333',class:'flow-node','data-state':key});
    c.addEventListener('click',()=>show(key)); svg.appendChild(c);
  }
}
tau.addEventListener('input', draw);
draw();
})();
"""


def _json_block(data) -> str:
    """JSON safe inside <script type=application/json>: no '<' survives, so no '</script>'."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _size(result: dict, circuit, g) -> str:
    """The circuit's size as the run counts it: edges, or (edge, span) units for a position-aware run."""
    if result.get("positions"):
        return (f"{result['n_edges']} of {result['n_edges_total']} (edge, span) units, on {circuit.n_edges} of "
                f"{g.n_edges} edges")
    return f"{circuit.n_edges} of {g.n_edges} edges"


def page(scores, circuit, result: dict, inspect: dict | None, figures: Path, extra: str = "") -> str:
    """The report page; extra: a section of HTML after the circuit's (the circuit over spans)."""
    g = scores.graph
    key = scores.scores.abs().masked_fill(~g.edge_mask, -1.0)
    order = key.flatten().argsort(descending=True)[:min(g.n_edges, max(MAX_SLIDER_EDGES, circuit.n_edges))]
    edges = [[int(i) // g.n_senders, int(i) % g.n_senders, float(scores.scores.flatten()[i])] for i in order]
    ci = scores.intervals
    if ci is not None:  # each edge's bootstrap interval and in-circuit frequency (-1: none), for hover and opacity
        freq = ci.get("frequency")
        for e in edges:
            e += [float(ci["low"][e[0], e[1]]), float(ci["high"][e[0], e[1]]),
                  -1.0 if freq is None else float(freq[e[0], e[1]])]
    start = int(circuit.provenance.get("edges", circuit.n_edges))
    nodes = scores.level == "node"
    data = {"senders": g.senders, "receivers": g.receivers, "receiverNode": g.receiver_node.tolist(),
            "edges": edges, "pos": node_positions(g), "rows": 2 * g.n_layers + 2, "nEdgesTotal": g.n_edges,
            "level": scores.level,
            "lens": {row["node"]: row for row in (inspect or {}).get("lens", [])},
            "tokenFlow": (inspect or {}).get("token_flow"),
            "examples": (inspect or {}).get("examples", [])}
    if nodes:  # the slider counts nodes: their order, each one's score (the same on every out-edge), and how
        # many senders each receiver reads (a prefix of them)
        start = int(circuit.provenance.get("nodes", g.n_senders))
        data |= {"nodeOrder": node_order(key).tolist(),
                 "nodeScore": scores.node_values().tolist(),
                 "reads": g.edge_mask.sum(1).tolist()}
    task = (inspect or {}).get("task", {"name": result["task"], "description": "", "citation": "", "metric": ""})
    examples = (inspect or {}).get("examples", [])[:8]
    width, height = max(640, 56 * g.n_heads + 80), max(320, 34 * (2 * g.n_layers + 2))
    esc = html.escape
    provenance = {k: result.get(k) for k in ("model", "task", "method", "ablation", "seed", "n", "seconds")}
    provenance |= {"scores": scores.metadata()["config"], "circuit": circuit.provenance.get("strategy"),
                   **result.get("provenance", {})}
    summary = _table(SUMMARY_COLUMNS, summary_rows([result]))
    kind, rows = top_rows(scores, 20)
    top_table = _table(top_header(scores, kind), rows)
    top = g.n_senders if nodes else len(edges)  # the slider's range
    prompt_rows = [[e["clean"], e["corrupt"], e["correct"], e["wrong"]] for e in examples]
    flow = (inspect or {}).get("flow")
    flow_section = ""
    if flow and (figures / "flow.png").exists():
        prompt = esc(examples[flow["example"]]["clean"]) if examples else ""
        flow_section = (f'<h2>Information flow of one prompt</h2><p>The contribution graph of <code>{prompt}</code> '
                        f'at the answer position (information-flow routes, τ = {flow["threshold"]}; '
                        f'{len(flow["edges"])} edges): what the model used on this prompt, with no ablation.</p>'
                        f'<div class="figs">{_img(figures / "flow.png", "information flow")}</div>')
    token_flow = (inspect or {}).get("token_flow")
    token_section = ""
    if token_flow:
        rows = 2 * token_flow["n_layers"] + 1
        fw, fh = max(640, 48 * len(token_flow["tokens"]) + 60), max(280, 26 * rows + 70)
        token_section = (f'<h2>Information flow, token by layer</h2><p>The same prompt\'s residual states at every layer '
                         f'(rows: the embeddings, then after each layer\'s attention and FFN) and token; an edge is a '
                         f'head block\'s contribution from one token to another (blue), an FFN\'s at its token (orange) '
                         f'or the residual connection (grey), its width the proximity weight. Hover an edge for its '
                         f'heads; click a state for the tokens it promotes and suppresses.</p>'
                         f'<p><label for="flow-tau">τ:</label> <input type="range" id="flow-tau" min="{token_flow["tau"]}" '
                         f'max="0.5" step="0.01" value="0.04" style="width:240px"> <span id="flow-count"></span></p>'
                         f'<div class="row"><svg id="token-flow" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {fw} {fh}" '
                         f'width="{fw}" height="{fh}"></svg><div id="flow-info" class="muted">Click a state.</div></div>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>circuitfind report: {esc(result['task'])} on {esc(result['model'])}</title>
<style>{STYLE}</style></head><body>
<h1>{esc(result['task'])} on {esc(result['model'])}</h1>
<p class="muted">method <b>{esc(result['method'])}</b>, ablation <b>{esc(result['ablation'])}</b>;
circuit of {_size(result, circuit, g)}, faithfulness {result['faithfulness']:.3f}</p>
<h2>Task</h2>
<p>{esc(task.get('description', ''))} <span class="muted">{esc(task.get('citation', ''))}</span> Metric: <code>{esc(str(task.get('metric', '')))}</code>.</p>
{_table(("clean prompt", "corrupted prompt", "correct", "wrong"), prompt_rows) if prompt_rows else ""}
<h2>Circuit</h2>
<p><label for="n-edges">top {"nodes" if nodes else "edges"} by |score|:</label>
<input type="range" id="n-edges" min="1" max="{top}" value="{min(start, top)}" style="width:320px">
<span id="edge-count"></span></p>
<div id="hover" class="mono"></div>
<div class="row">
<svg id="circuit" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}"></svg>
<div id="panel"><div id="node-info"><p class="muted">Click a node for its logit lens: the tokens it promotes and
suppresses, and the examples where it matters most. Hover an edge for its score. Red edges support the
task, blue oppose it; q inputs dashed, k dotted.</p></div></div>
</div>
{extra}
{flow_section}
{token_section}
<h2>Faithfulness and scores</h2>
<div class="figs">{_img(figures / 'faithfulness.png', 'faithfulness curve')}{_img(figures / 'heads.png', 'node importance')}
{_img(figures / 'scores.png', 'score distribution')}{_img(figures / 'lens.png', 'logit lens')}</div>
<h2>Tables</h2>
{summary}
<h3>Top {kind}s</h3>
{top_table}
<h2>Provenance</h2>
<pre class="mono">{esc(json.dumps(provenance, indent=2, default=str))}</pre>
<script type="application/json" id="report-data">{_json_block(data)}</script>
<script>{SCRIPT}</script>
<script>{FLOW_SCRIPT}</script>
</body></html>
"""
