// circuitfind serve: the page. Every string from the server (tokens, prompts, node names, errors) is inserted with
// textContent, never as markup. The drawings are circuitfindDraw's (report/assets/draw.js), as in report.html.
(function(){
const $ = id => document.getElementById(id);
let current = null;  // the prompt view's last run: {model, prompt, data}
let pending = 0, polling = null;

function node(tag, text, attrs){ const e = document.createElement(tag); if(text !== undefined) e.textContent = text;
  for(const k in (attrs||{})) e.setAttribute(k, attrs[k]); return e; }
function table(header, rows, cls){
  const t = node('table', undefined, cls ? {class: cls} : {}); const hr = node('tr'); header.forEach(h => hr.appendChild(node('th', h))); t.appendChild(hr);
  for(const r of rows){ const tr = node('tr'); r.forEach(c => tr.appendChild(c instanceof Node ? wrap(c) : node('td', c))); t.appendChild(tr); }
  return t;
}
function wrap(c){ if(c.tagName === 'TD') return c; const td = node('td'); td.appendChild(c); return td; }
function num(v, digits){ return node('td', (+v).toFixed(digits === undefined ? 4 : digits), {class: 'num', 'data-value': String(v)}); }
function showError(msg){ $('error').textContent = msg || ''; }

// ---- requests: one at a time on the server's worker; the status line says what runs and how many wait
async function api(path, body){
  pending++; startPolling(); showError('');
  try {
    const r = await fetch(path, body === undefined ? {} : {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
    let j; try { j = await r.json(); } catch(e){ j = {error: `the server answered ${r.status} without JSON`}; }
    if(!r.ok || j.error) throw new Error(j.error || `the server answered ${r.status}`);
    showError('');
    return j;
  } finally { pending--; if(pending === 0) $('status').textContent = ''; }
}
function startPolling(){
  $('status').textContent = 'working…';
  if(polling) return;
  polling = setInterval(async () => {
    if(pending === 0){ clearInterval(polling); polling = null; $('status').textContent = ''; return; }
    try { const s = await (await fetch('/api/status')).json();
      if(pending === 0) return;  // (the answer came while this asked)
      $('status').textContent = `working: ${s.running || 'starting'}` + (s.waiting ? ` (${s.waiting} waiting)` : '');
    } catch(e){ $('status').textContent = 'working… (no answer from the server)'; }
  }, 250);
}
function guarded(fn){ return async (...args) => { try { await fn(...args); } catch(e){ showError(e.message); } }; }

// ---- prompt view
async function loadModels(){
  const m = await api('/api/models');
  for(const name of m.models) $('model').appendChild(node('option', name, {value: name}));
  $('model').addEventListener('change', () => showSaes(m));
  showSaes(m); ivForm();
  if(m.runs) loadRuns();
}
const runPrompt = guarded(async () => {
  const t0 = performance.now();
  const body = {model: $('model').value, prompt: $('prompt').value};
  const data = await api('/api/analyse', body);
  current = {...body, data};
  const p = $('prediction'); p.replaceChildren();
  p.appendChild(node('p', '', {})).append(node('code', body.prompt, {id: 'prompt-shown'}), ` (${data.tokens.length} tokens)`);
  p.appendChild(table(['next token', 'p'], data.top.map(([w, pr]) => [JSON.stringify(w), num(pr, 3)]), 'topk'));
  const F = data.flow, svg = $('flow'), R = 2*F.n_layers + 1;
  svg.setAttribute('width', Math.max(640, 48*F.tokens.length + 60)); svg.setAttribute('height', Math.max(280, 26*R + 70));
  drawFlow();
  $('flow-box').scrollLeft = $('flow-box').scrollWidth;  // the prediction's position is the last
  const ms = performance.now() - t0;
  svg.setAttribute('data-ms', ms.toFixed(1));
  $('timing').textContent = `graph in ${ms.toFixed(0)} ms`;
});
function drawFlow(){
  if(!current) return;
  const tau = +$('tau').value;
  const [edges, kept] = circuitfindDraw.drawFlow($('flow'), current.data.flow, tau, {state: showState, edge: showEdge});
  const c = $('flow-count'); c.textContent = `τ = ${tau.toFixed(2)}: ${edges.length} edges, ${kept.size} states`;
  c.setAttribute('data-edges', edges.length);
}
function detail(title){ const d = $('detail'); d.replaceChildren(); d.classList.remove('muted'); d.appendChild(node('h3', title)); return d; }
const showState = guarded(async key => {
  const [row, token] = key.split(',').map(Number);
  const s = await api('/api/state', {model: current.model, prompt: current.prompt, row, token});
  const d = detail(`${s.where}, token ${JSON.stringify(s.text)} (${s.token})`);
  d.appendChild(table(['promotes', 'logit'], s.promoted.map(([w, v]) => [node('td', w, {class: 'lens-up'}), num(v, 3)])));
  d.appendChild(table(['suppresses', 'logit'], s.suppressed.map(([w, v]) => [node('td', w, {class: 'lens-down'}), num(v, 3)])));
  const b = d.appendChild(node('button', 'Patchscope', {id: 'patchscope'}));  // what the model says of this state
  const out = d.appendChild(node('p', '', {id: 'patchscope-out'}));
  b.addEventListener('click', guarded(async () => {
    const r = await api('/api/patchscope', {model: current.model, prompt: current.prompt, row, token});
    out.textContent = `${r.source}, patched into ${JSON.stringify(r.target)} at ${r.into}: the model says ${JSON.stringify(r.said)}`;
  }));
});
function showEdge(e){
  const F = current.data.flow;
  if(e.kind === 'ffn') return showNeurons(`m${e.layer}`, e.dst);
  if(e.kind !== 'attn'){ detail(`layer ${e.layer}: the residual connection at ${JSON.stringify(F.tokens[e.dst])}, weight ${e.weight.toFixed(3)}`); return; }
  const d = detail(`layer ${e.layer} attention ${JSON.stringify(F.tokens[e.src])} → ${JSON.stringify(F.tokens[e.dst])}, weight ${e.weight.toFixed(3)}`);
  d.appendChild(table(['head', 'share'], e.heads.map(([h, s]) => [node('span', `a${e.layer}.h${h}`, {class: 'pick head-pick', 'data-head': `a${e.layer}.h${h}`}), num(s, 3)])));
  d.querySelectorAll('.head-pick').forEach(b => b.addEventListener('click', () => showHead(b.dataset.head, e.dst, e.src)));
}
const showHead = guarded(async (name, dst, src) => {
  const a = await api('/api/head', {model: current.model, prompt: current.prompt, node: name, dst, src});
  const T = current.data.flow.tokens;
  const d = detail(`${a.node} at ${JSON.stringify(T[a.dst])} (${a.dst}): its attention`);
  const ps = d.appendChild(node('p'));
  ps.appendChild(node('button', `Patchscope of ${a.node}'s output here`, {id: 'head-patchscope'})).addEventListener('click', guarded(async () => {
    const r = await api('/api/patchscope', {model: current.model, prompt: current.prompt, source: a.node, token: a.dst});
    ps.lastChild.textContent = ` patched into ${JSON.stringify(r.target)} at ${r.into}: the model says ${JSON.stringify(r.said)}`;
  }));
  ps.appendChild(node('span', '', {id: 'head-patchscope-out'}));
  const keys = d.appendChild(node('div', undefined, {class: 'scroll keys'}));
  keys.appendChild(table(['key token (click: why)', 'attention', ''], a.pattern.slice(0, a.dst + 1).map((p, i) => [
    node('span', `${JSON.stringify(T[i])} (${i})`, {class: 'pick key-pick', 'data-src': i}), num(p, 3),
    node('span', '', {class: 'bar', style: `width:${(80*p).toFixed(1)}px`})])));
  d.querySelectorAll('.key-pick').forEach(b => b.addEventListener('click', () => showHead(name, a.dst, +b.dataset.src)));
  d.appendChild(node('h3', `why it attends to ${JSON.stringify(T[a.src])} (${a.src})`));
  const sc = d.appendChild(node('p', 'query–key score '));
  sc.appendChild(node('b', a.score.toFixed(4), {id: 'attn-score', 'data-value': String(a.score)}));
  sc.append(` ${a.note}= the sum of the terms below (each: a sender into the query × a sender into the key)`);
  const terms = [];
  a.terms.forEach((row, i) => row.forEach((v, j) => terms.push([a.senders[i], a.senders[j], v])));
  terms.sort((x, y) => Math.abs(y[2]) - Math.abs(x[2]));
  const shown = terms.slice(0, 15), rest = terms.slice(15).reduce((s, t) => s + t[2], 0);
  const rows = shown.map(([q, k, v]) => [q, k, num(v)]);
  if(terms.length > 15) rows.push([`all other ${terms.length - 15} terms`, '', num(rest)]);
  if(a.alibi) rows.push(['ALiBi position bias', '', num(a.alibi)]);
  d.appendChild(table(['into the query', 'into the key', 'term'], rows, 'terms'));
});
const showNeurons = guarded(async (name, token) => {
  const n = await api('/api/neurons', {model: current.model, prompt: current.prompt, node: name, token});
  const d = detail(`${n.node} at ${JSON.stringify(current.data.flow.tokens[n.token])} (${n.token}): top neurons by contribution to ${JSON.stringify(n.predicted)}`);
  d.appendChild(table(['neuron', 'activation', 'contribution', 'promotes'], n.neurons.map(r => [
    node('span', r.neuron, {class: 'pick neuron-pick'}), num(r.activation, 3), num(r.contribution, 3), r.promotes.map(w => JSON.stringify(w)).join(' ')]), 'neurons'));
  const ex = d.appendChild(node('p')); ex.append('top-activating examples from task ');
  const task = ex.appendChild(node('input', undefined, {id: 'examples-task', size: 8, value: 'ioi'}));
  ex.append(' (click a neuron)');
  const list = d.appendChild(node('div', undefined, {id: 'examples'}));
  d.querySelectorAll('.neuron-pick').forEach(b => b.addEventListener('click', guarded(async () => {
    $('iv-node').value = b.textContent; ivForm();
    const r = await api('/api/examples', {model: current.model, node: b.textContent, task: task.value});
    list.replaceChildren(node('h3', `${r.node} on ${r.task}`));
    list.appendChild(table(['context', 'activation'], r.examples.map(e => [node('td', e.context, {class: 'example'}), num(e.value, 3)])));
  })));
});
const showTyped = guarded(async () => {
  if(!current) throw new Error('run a prompt first');
  const name = $('node').value.trim(), token = parseInt($('node-token').value);
  const T = current.data.tokens.length, t = ((token % T) + T) % T;
  if(/^m\d+$/.test(name)) return showNeurons(name, token);
  const r = /^resid:(\d+)$/.exec(name);
  if(r) return showState(`${2*+r[1]},${t}`);
  return showHead(name, token, null);  // the server names what is wrong with anything else
});

// ---- contrast view: ci.why, sortable; the intervention panel as ci.compare
let why = null, sortKey = 'total', sortDir = -1;
const runWhy = guarded(async () => {
  why = await api('/api/contrast', {model: $('model').value, prompt: $('prompt').value, a: $('why-a').value, b: $('why-b').value});
  $('why-sum').textContent = `logit(${JSON.stringify(why.a)}) − logit(${JSON.stringify(why.b)}) = ${why.logit_diff.toFixed(4)}`;
  drawWhy();
});
function drawWhy(){
  const body = $('why-table').tBodies[0]; body.replaceChildren();
  const key = r => sortKey === 'node' ? r.node : Math.abs(r[sortKey]);
  const rows = why.nodes.slice().sort((x, y) => (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0) * sortDir);
  for(const r of rows){ const tr = node('tr'); tr.appendChild(node('td', r.node, {class: 'pick'})); tr.appendChild(num(r.direct)); tr.appendChild(num(r.total));
    tr.firstChild.addEventListener('click', () => { $('iv-node').value = r.node; ivForm(); }); body.appendChild(tr); }
}
// the panel's form says what each choice does; the server checks it all again (and says what is wrong)
function ivForm(){
  const kind = $('iv-kind').value, name = $('iv-node').value.trim();
  const oneNumber = /^m\d+\.n\d+$/.test(name) || /^sae:/.test(name);
  $('iv-value-label').hidden = kind === 'zero';
  $('iv-value-name').textContent = kind === 'scale' ? 'by a factor' : 'coefficient';
  $('iv-direction').hidden = kind !== 'steer' || oneNumber;
  $('iv-help').textContent = kind === 'zero' ? 'zero: the node writes nothing (an MLP keeps its constant output bias; a latent is set to 0).'
    : kind === 'scale' ? 'scale: the node\'s output (a neuron\'s or a latent\'s activation) times the factor.'
    : oneNumber ? 'steer: the coefficient is added to the activation (a latent then writes coefficient × its decoder row).'
    : 'steer: coefficient × the unit direction that raises logit(toward) − logit(away) (ci.token_direction) is added to the output of the head, the MLP or the residual stream (resid:L).';
}
function showSaes(m){
  const sae = (m.saes || {})[$('model').value];
  $('iv-sae').textContent = sae ? `SAE on ${$('model').value}: ${sae.n_latents} latents at ${sae.hook} (sae:0 … sae:${sae.n_latents - 1})`
    : `no SAE loaded for ${$('model').value} (start the server with --sae MODEL=PATH for its latents, sae:i)`;
}
const runIntervention = guarded(async () => {
  const r = await api('/api/intervene', {model: $('model').value, prompt: $('prompt').value, node: $('iv-node').value,
    kind: $('iv-kind').value, value: $('iv-value').value, toward: $('iv-toward').value, away: $('iv-away').value,
    new_tokens: parseInt($('iv-tokens').value)});
  const out = $('iv-out'); out.replaceChildren();
  const side = (title, top, gen, id) => { const div = node('div', undefined, {id}); div.appendChild(node('h3', title));
    div.appendChild(table(['next token', 'probability'], top.map(([w, p]) => [node('td', w, {class: 'next'}), num(p)])));
    div.appendChild(node('p', gen, {class: 'generation'})); return div; };
  const row = node('div', undefined, {class: 'row'});
  row.appendChild(side('as it is', r.top_before, r.baseline, 'iv-before'));
  row.appendChild(side(r.what, r.top_after, r.intervened, 'iv-after'));
  out.appendChild(row);
});
const runPatchscope = guarded(async () => {
  const r = await api('/api/patchscope', {model: $('model').value, prompt: $('prompt').value, source: $('ps-source').value,
    token: parseInt($('ps-token').value), target: $('ps-target').value});
  $('ps-out').textContent = `${r.source} at ${JSON.stringify(r.text)} (${r.token}), patched into ${JSON.stringify(r.target)} at ${r.into}: the model says ${JSON.stringify(r.said)}`;
});

// ---- runs view: the circuit drawing of report.html, the curve, the summary; two runs with their overlap
async function loadRuns(){
  const r = await api('/api/runs');
  for(const sel of ['run-a', 'run-b']) for(const run of r.runs)
    $(sel).appendChild(node('option', `${run.name} (${run.model}, ${run.task}, ${run.method})`, {value: run.name}));
}
function curve(c){
  const svg = circuitfindDraw.el('svg', {width: 320, height: 160, class: 'curve'});
  const xs = c.fractions, ys = c.faithfulness_absolute.length ? c.faithfulness_absolute : c.faithfulness_signed;
  if(!xs.length) return svg;
  const lo = Math.min(0, ...ys), hi = Math.max(1, ...ys);
  const x = f => 30 + 280*Math.log10(Math.max(f, 1e-4)/1e-4)/4, y = v => 140 - 120*(v - lo)/(hi - lo);
  svg.appendChild(circuitfindDraw.el('polyline', {points: xs.map((f, i) => `${x(f)},${y(ys[i])}`).join(' '), fill: 'none', stroke: '#cc2619'}));
  const t = circuitfindDraw.el('text', {x: 30, y: 156, 'font-size': 10}); t.textContent = 'faithfulness against the fraction of edges (log)'; svg.appendChild(t);
  return svg;
}
function pane(run){
  const p = node('div', undefined, {class: 'pane', 'data-run': run.name}); p.appendChild(node('h3', run.name));
  const D = run.drawing, heads = 1 + Math.max(0, ...D.senders.map(s => +((/\.h(\d+)$/.exec(s) || [0, 0])[1])));
  const W = Math.max(640, 56*heads + 80), H = Math.max(320, 34*D.rows);
  const top = D.level === 'node' ? D.senders.length : D.edges.length;
  const slider = node('input', undefined, {type: 'range', min: 1, max: top, value: Math.min(run.start, top), class: 'run-k'});
  const count = node('span', '', {class: 'run-count'});
  p.appendChild(node('p')).append('top ', slider, ' ', count);
  const svg = circuitfindDraw.el('svg', {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'run-circuit'});
  const box = node('div', undefined, {class: 'scroll'}); box.appendChild(svg); p.appendChild(box);
  const draw = () => { const e = circuitfindDraw.drawCircuit(svg, D, +slider.value, {}); count.textContent = `${e.length} edges of ${D.nEdgesTotal}`; count.setAttribute('data-edges', e.length); };
  slider.addEventListener('input', draw); setTimeout(draw, 0);
  p.appendChild(curve(run.curve));
  for(const [name, src] of Object.entries(run.figures)) p.appendChild(node('img', undefined, {src, alt: name, class: 'figure'}));
  p.appendChild(table(run.summary.header, run.summary.rows, 'summary'));
  p.appendChild(table(['top edge', 'score'], D.edges.slice(0, 10).map(e => [`${D.senders[e[1]]}->${D.receivers[e[0]]}`, num(e[2])]), 'top-edges'));
  return p;
}
const showRuns = guarded(async () => {
  const a = $('run-a').value, b = $('run-b').value, panes = $('run-panes');
  if(!a) throw new Error('no run to show: the folder given to --runs holds none');
  panes.replaceChildren(); $('overlap').textContent = '';
  panes.appendChild(pane(await api('/api/runs?name=' + encodeURIComponent(a))));
  if(b){ panes.appendChild(pane(await api('/api/runs?name=' + encodeURIComponent(b))));
    const o = await api(`/api/runs?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
    $('overlap').textContent = `shared ${o.shared} edges, ${o.only_a} only in the first, ${o.only_b} only in the second; IoU ${o.iou.toFixed(3)}`; }
});

// ---- wiring
document.querySelectorAll('.tab').forEach(t => t.addEventListener('click', () => {
  document.querySelectorAll('.tab').forEach(u => u.classList.toggle('on', u === t));
  document.querySelectorAll('.view').forEach(v => { v.hidden = v.id !== 'view-' + t.dataset.view; });
}));
$('run').addEventListener('click', runPrompt);
$('tau').addEventListener('input', drawFlow);
$('show-node').addEventListener('click', showTyped);
$('why-run').addEventListener('click', runWhy);
document.querySelectorAll('#why-table th[data-key]').forEach(th => th.addEventListener('click', () => {
  sortDir = sortKey === th.dataset.key ? -sortDir : (th.dataset.key === 'node' ? 1 : -1); sortKey = th.dataset.key; if(why) drawWhy(); }));
$('iv-run').addEventListener('click', runIntervention);
$('iv-kind').addEventListener('change', ivForm);
$('iv-node').addEventListener('input', ivForm);
$('ps-run').addEventListener('click', runPatchscope);
$('runs-show').addEventListener('click', showRuns);
guarded(loadModels)();
})();
