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

const filter = data.filter ?? {};
const $ = (id) => document.getElementById(id);
$('f-status').value = filter.status ?? '';
$('f-kind').value = filter.kind ?? '';
$('f-q').value = filter.q ?? '';
const page = data.page ?? 1;
const pages = data.pages ?? 1;
const perPage = data.per_page ?? tasks.length;
$('matching').textContent = `${data.matching ?? tasks.length} matching`;
const pageUrl = (n) => {
  const q = new URLSearchParams();
  if (filter.status) q.set('status', filter.status);
  if (filter.kind) q.set('kind', filter.kind);
  if (filter.q) q.set('q', filter.q);
  q.set('page', String(n));
  return `/?${q}`;
};
$('pager').hidden = pages < 2;
$('page-text').textContent = `page ${page} of ${pages}`;
$('prev-page').href = pageUrl(Math.max(1, page - 1));
$('next-page').href = pageUrl(Math.min(pages, page + 1));
$('prev-page').classList.toggle('disabled', page <= 1);
$('next-page').classList.toggle('disabled', page >= pages);

const rows = document.getElementById('task-rows');
tasks.forEach((task, i) => {
  const status = STATUS_TEXT[task.status] ?? String(task.status);
  rows.append(h('tr', { cls: `task-${task.status}` },
    h('td', { cls: 'muted', text: (page - 1) * perPage + i + 1 }),
    h('td', {}, h('a', { attrs: { href: safePath(task.url), dir: 'auto' }, text: task.title || `Task ${task.id}` })),
    h('td', { cls: 'muted small' }, h('bdi', { text: task.example_id ?? '' })),
    h('td', {}, h('span', { cls: `kind kind-${task.kind}`, text: task.kind === 'compare' ? 'compare' : 'annotate' })),
    h('td', {}, h('span', { cls: `badge badge-${task.status}`, text: status }))));
});
document.getElementById('empty').hidden = tasks.length > 0;
if (!tasks.length && total) $('empty').textContent = 'No task matches this filter.';

const nextLink = document.getElementById('next-task');
if (data.next_url) {
  nextLink.href = safePath(data.next_url);
  nextLink.hidden = false;
  document.addEventListener('keydown', (event) => {
    if (!typingIn(event) && !event.ctrlKey && !event.metaKey && !event.altKey && event.key.toLowerCase() === 'n') {
      window.location.assign(nextLink.href);
    }
  });
}
