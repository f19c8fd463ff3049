// circuitfind's drawings, shared by report.html (inlined) and `circuitfind serve` (served): the circuit of a run
// and the token-by-layer flow graph of a prompt. Text goes in through textContent only, never as markup.
const circuitfindDraw = (function(){
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs){ const e=document.createElementNS(NS,tag); for(const k in attrs) e.setAttribute(k,attrs[k]); return e; }
function clear(svg){ while(svg.firstChild) svg.removeChild(svg.firstChild); }

// ---- the circuit: top-k edges by |score| (D.edges is sorted so), or for node scores every edge among the top-k
// nodes, then dangling edges removed as circuitfind.prune does
function circuitEdges(D, k){
  const S = D.senders.length;
  return withoutDangling(D, S, D.level==='node' ? amongTopNodes(D, S, k) : D.edges.slice(0,k));
}
function amongTopNodes(D, S, k){
  const keep = new Array(S).fill(false); for(const s of D.nodeOrder.slice(0,k)) keep[s]=true;
  const kept = [];
  D.receivers.forEach((_, r)=>{ const n=D.receiverNode[r]; if(n>=0 && !keep[n]) return;
    for(let s=0;s<D.reads[r];s++) if(keep[s]) kept.push([r,s,D.nodeScore[s]]); });
  return kept;
}
function withoutDangling(D, S, kept){
  const reached = new Array(S).fill(false); reached[0] = true;
  const bySender = new Map();
  for(const e of kept){ const n=D.receiverNode[e[0]]; if(!bySender.has(n)) bySender.set(n,[]); bySender.get(n).push(e); }
  for(let s=1;s<S;s++){ const ins=bySender.get(s)||[]; reached[s]=ins.some(e=>reached[e[1]]); }
  const useful = new Array(S).fill(false);
  const outs = new Map(); for(const e of kept){ if(!outs.has(e[1])) outs.set(e[1],[]); outs.get(e[1]).push(e); }
  for(let s=S-1;s>=0;s--){ for(const e of (outs.get(s)||[])){ const n=D.receiverNode[e[0]]; if(n<0||useful[n]){useful[s]=true;break;} } }
  return kept.filter(e=>{ const n=D.receiverNode[e[0]]; return reached[e[1]] && (n<0 || (useful[n] && reached[n])); });
}
const dash = {q:'5,3', k:'1.5,2', v:'', '':'', in:'', router:'5,3'};
function colour(s, top){ const a=(0.25+0.75*Math.min(1,Math.abs(s)/top)).toFixed(3); return s>=0?`rgba(204,38,25,${a})`:`rgba(26,77,204,${a})`; }
// draw the circuit of the top k into svg (its viewBox sets the size); on.node(name), on.hover(text); → the edges drawn
function drawCircuit(svg, D, k, on){
  on = on || {};
  const edges = circuitEdges(D, k);
  clear(svg);
  const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height, rows = D.rows;
  const xy = name => { const p=D.pos[name]; return [30+p[0]*(W-60), H-20-p[1]*(H-40)/(rows-1)]; };
  const top = Math.max(1e-12, ...edges.map(e=>Math.abs(e[2])));
  const used = new Set();
  const gEdges = el('g',{}); svg.appendChild(gEdges);
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
    if(on.hover) line.addEventListener('mouseenter',()=>on.hover(t.textContent));
    gEdges.appendChild(line);
  }
  const gNodes = el('g',{}); svg.appendChild(gNodes);
  for(const n of used){
    const [x,y]=xy(n); const g=el('g',{class:'node','data-node':n});
    const box = /^(m\d+|input|logits)$/.test(n);
    g.appendChild(box? el('rect',{x:x-22,y:y-8,width:44,height:16,rx:3,fill:'#f2e6c9',stroke:'#333'})
                     : el('ellipse',{cx:x,cy:y,rx:22,ry:9,fill:'#d9e8f5',stroke:'#333'}));
    const label=el('text',{x:x,y:y+3.5,'text-anchor':'middle','font-size':'10'}); label.textContent=n; g.appendChild(label);
    if(on.node) g.addEventListener('click',()=>on.node(n));
    gNodes.appendChild(g);
  }
  return edges;
}

// ---- the token-by-layer flow graph at τ, pruned as circuitfind.inspect.flow prunes it: top-down, an edge kept when
// its weight ≥ τ and it feeds a state already kept (F holds the graph at a lower τ, of which every higher τ's is a part)
function flowEdges(F, tau){
  const R = 2*F.n_layers+1, kept = new Set([(R-1)+','+F.position]), edges = [];
  const order = F.edges.slice().sort((a,b)=>b.rows[1]-a.rows[1]);
  for(const e of order){ if(e.weight>=tau && kept.has(e.rows[1]+','+e.dst)){ edges.push(e); kept.add(e.rows[0]+','+e.src); } }
  return [edges, kept];
}
// draw it into svg (its width and height attributes set the size); on.state("row,token"), on.edge(edge); → [edges, kept]
function drawFlow(svg, F, tau, on){
  on = on || {};
  clear(svg);
  const [edges, kept] = flowEdges(F, tau);
  const T = F.tokens.length, R = 2*F.n_layers+1, W = +svg.getAttribute('width'), H = +svg.getAttribute('height');
  const x = t => 40 + (W-60)*(t+0.5)/T, y = r => H-40 - (H-70)*r/(R-1);
  F.tokens.forEach((w,t)=>{ const lab = el('text',{x:x(t),y:H-8,'font-size':10,'text-anchor':'middle',class:'flow-token'}); lab.textContent = w; svg.appendChild(lab); });
  for(const e of edges){
    const [r0,r1] = e.rows, off = e.kind==='ffn' ? 5 : 0;
    const stroke = e.kind==='attn' ? '#3b6fb6' : (e.kind==='ffn' ? '#e08a1e' : '#999999');
    const line = el('line',{x1:x(e.src)+off,y1:y(r0),x2:x(e.dst)+off,y2:y(r1),stroke:stroke,'stroke-width':(0.5+5*e.weight).toFixed(2),
                            'stroke-opacity':0.8,class:'flow-edge','data-kind':e.kind,'data-edge':`${e.kind}:${e.layer}:${e.src}:${e.dst}`});
    const t = el('title',{});
    t.textContent = `layer ${e.layer} ${e.kind} ${F.tokens[e.src]} → ${F.tokens[e.dst]}: ${e.weight.toFixed(3)}` +
      (e.heads.length ? '  heads ' + e.heads.slice(0,4).map(([h,s])=>`a${e.layer}.h${h} ${(100*s).toFixed(0)}%`).join(', ') : '');
    line.appendChild(t);
    if(on.edge){ line.style.cursor='pointer'; line.addEventListener('click',()=>on.edge(e)); }
    svg.appendChild(line);
  }
  for(const key of kept){
    const [r,t] = key.split(',').map(Number);
    const c = el('circle',{cx:x(t),cy:y(r),r:4,fill:'#333',class:'flow-node','data-state':key});
    if(on.state) c.addEventListener('click',()=>on.state(key));
    svg.appendChild(c);
  }
  return [edges, kept];
}
return {el, circuitEdges, drawCircuit, flowEdges, drawFlow};
})();
