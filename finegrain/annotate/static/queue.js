// The annotator's queue: tasks with their status, overall progress, N opens the next open task.
import { pageData, h, safePath, fillHeader, typingIn } from './common.js';

const data = pageData();
fillHeader(data);

const STATUS_TEXT = { todo: 'to do', draft: 'draft saved', done: 'done' };
const tasks = data.tasks ?? [];
const done = data.progress?.done ?? tasks.filter((t) => t.status === 'done').length;
const total = data.progress?.total ?? tasks.length;

const bar = document.getElementById('progress');
bar.max = Math.max(total, 1);
bar.value = done;
document.getElementById('progress-text').textContent =
  `${done} of ${total} done${total ? ` (${Math.round((100 * done) / total)}%)` : ''}`;

const rows = document.getElementById('task-rows');
tasks.forEach((task, i) => {
  const status = STATUS_TEXT[task.status] ?? String(task.status);
  rows.append(h('tr', { cls: `task-${task.status}` },
    h('td', { cls: 'muted', text: i + 1 }),
    h('td', {}, h('a', { attrs: { href: safePath(task.url) }, text: task.title || `Task ${task.id}` })),
    h('td', {}, h('span', { cls: `kind kind-${task.kind}`, text: task.kind === 'compare' ? 'compare' : 'annotate' })),
    h('td', {}, h('span', { cls: `badge badge-${task.status}`, text: status }))));
});
document.getElementById('empty').hidden = tasks.length > 0;

const next = tasks.find((t) => t.status === 'draft') ?? tasks.find((t) => t.status === 'todo');
const nextLink = document.getElementById('next-task');
if (next) {
  nextLink.href = safePath(next.url);
  nextLink.hidden = false;
  document.addEventListener('keydown', (event) => {
    if (!typingIn(event) && !event.ctrlKey && !event.metaKey && !event.altKey && event.key.toLowerCase() === 'n') {
      window.location.assign(nextLink.href);
    }
  });
}
