// The reviewer's list: annotated responses and whether they have been adjudicated.
import { pageData, h, safePath, fillHeader } from './common.js';

const data = pageData();
fillHeader(data);
const tasks = data.tasks ?? [];
const rows = document.getElementById('review-rows');
for (const t of tasks) {
  rows.append(h('tr', {},
    h('td', { cls: 'muted', text: t.id }),
    h('td', {}, h('a', { attrs: { href: safePath(t.url), dir: 'auto' }, text: `${t.title} — response ${t.response_index + 1}` })),
    h('td', { cls: 'muted small' }, h('bdi', { text: t.example_id })),
    h('td', { text: t.annotators.join(', ') }),
    h('td', {}, h('span', { cls: `badge badge-${t.adjudicated ? 'done' : 'todo'}`, text: t.adjudicated ? `version ${t.adjudicated}` : 'not yet' }))));
}
document.getElementById('empty').hidden = tasks.length > 0;
