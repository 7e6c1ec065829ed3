// Admin view: overall and per-annotator progress.
import { pageData, h, fillHeader } from './common.js';

const data = pageData();
fillHeader({ ...data, role: null });

const pct = (done, total) => (total ? `${Math.round((100 * done) / total)}%` : '–');
const annotators = data.annotators ?? [];
const overall = data.overall ?? { done: 0, total: 0 };

document.getElementById('tasks-count').textContent = String(data.tasks ?? 0);
document.getElementById('overall-count').textContent = `${overall.done} / ${overall.total}`;
document.getElementById('annotator-count').textContent = String(annotators.length);
document.getElementById('records-count').textContent = String(data.records ?? '–');
const bar = document.getElementById('overall');
bar.max = Math.max(overall.total, 1);
bar.value = overall.done;
document.getElementById('overall-text').textContent = `${pct(overall.done, overall.total)} of all assignments done`;

const rows = document.getElementById('annotator-rows');
for (const a of annotators) {
  const progress = h('progress', { attrs: { max: Math.max(a.total, 1), value: a.done } });
  rows.append(h('tr', {},
    h('td', {}, a.name, a.role === 'admin' ? h('span', { cls: 'muted', text: ' (admin)' }) : null,
      a.revoked ? h('span', { cls: 'badge badge-revoked', text: 'revoked' }) : null),
    h('td', { text: `${a.done} / ${a.total}` }),
    h('td', { cls: 'progress-cell' }, progress, h('span', { cls: 'muted', text: ` ${pct(a.done, a.total)}` }))));
}
