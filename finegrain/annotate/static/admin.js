// Admin view: progress per annotator, tokens (create, revoke: the server applies the CLI's checks),
// agreement per annotator, export and the way to review.
import { pageData, h, fillHeader, postJSON, setStatus } from './common.js';

const data = pageData();
fillHeader(data);
const $ = (id) => document.getElementById(id);

const pct = (done, total) => (total ? `${Math.round((100 * done) / total)}%` : '–');
const num = (x) => (x === null || x === undefined ? 'n/a' : Number(x).toFixed(3));
const annotators = data.annotators ?? [];
const overall = data.overall ?? { done: 0, total: 0 };

$('tasks-count').textContent = String(data.tasks ?? 0);
$('overall-count').textContent = `${overall.done} / ${overall.total}`;
$('annotator-count').textContent = String(annotators.filter((a) => !a.revoked).length);
$('records-count').textContent = String(data.records ?? '–');
const bar = $('overall');
bar.max = Math.max(overall.total, 1);
bar.value = overall.done;
$('overall-text').textContent = `${pct(overall.done, overall.total)} of all assignments done`;

async function revoke(name, button) {
  if (!window.confirm(`Revoke ${name}'s token? Their sessions end; their work stays.`)) return;
  button.disabled = true;
  try {
    await postJSON('/api/admin/tokens/revoke', { name }, data.csrf_token, { retries: 0 });
    setStatus($('token-status'), 'ok', `Revoked ${name}.`);
    button.replaceWith(h('span', { cls: 'badge badge-revoked', text: 'revoked' }));
  } catch (err) {
    setStatus($('token-status'), 'error', err.message);
    button.disabled = false;
  }
}
const revokeButton = (name, revoked) => (revoked || name === data.user ? null
  : h('button', { cls: 'link', text: 'Revoke', attrs: { type: 'button', 'data-revoke': name } }));

for (const a of annotators) {
  const progress = h('progress', { attrs: { max: Math.max(a.total, 1), value: a.done } });
  const button = revokeButton(a.name, a.revoked);
  button?.addEventListener('click', () => revoke(a.name, button));
  $('annotator-rows').append(h('tr', {},
    h('td', {}, h('bdi', { text: a.name }), a.revoked ? h('span', { cls: 'badge badge-revoked', text: 'revoked' }) : null),
    h('td', { text: `${a.done} / ${a.total}` }),
    h('td', { cls: 'progress-cell' }, progress, h('span', { cls: 'muted', text: ` ${pct(a.done, a.total)}` })),
    h('td', {}, button)));
}
for (const s of data.staff ?? []) {
  const button = s.role === 'source' ? null : revokeButton(s.name, s.revoked);
  button?.addEventListener('click', () => revoke(s.name, button));
  $('staff-rows').append(h('tr', {},
    h('td', {}, h('bdi', { text: s.name }), s.revoked && s.role !== 'source' ? h('span', { cls: 'badge badge-revoked', text: 'revoked' }) : null),
    h('td', { text: s.role === 'source' ? 'source (imported feedback)' : s.role }),
    h('td', {}, button)));
}

for (const r of data.agreement ?? []) {
  $('agreement-rows').append(h('tr', {},
    h('td', {}, h('bdi', { text: r.annotator })), h('td', { text: r.tasks }), h('td', { text: r.spans }),
    h('td', { text: num(r.f1_exact) }), h('td', { text: num(r.f1_overlap) }), h('td', { text: num(r.segment_kappa) }),
    h('td', { text: num(r.pairwise_kappa) }), h('td', { text: num(r.edit_distance) })));
}
if (!(data.agreement ?? []).length) {
  $('agreement-rows').append(h('tr', {}, h('td', { cls: 'muted', text: 'No task has two annotators yet.', attrs: { colspan: '8' } })));
}
$('review-link').textContent = `Review and adjudicate (${data.review_tasks ?? 0} annotated tasks)`;

$('token-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('token-name').value.trim();
  const role = $('token-role').value;
  setStatus($('token-status'), 'busy', 'Creating…');
  $('token-once').hidden = true;
  try {
    const answer = await postJSON('/api/admin/tokens', { name, role }, data.csrf_token, { retries: 0 });
    $('token-for').textContent = `${answer.name} (${answer.role})`;
    $('token-value').textContent = answer.token;
    $('token-once').hidden = false;
    setStatus($('token-status'), 'ok', `Created ${answer.name}; assign tasks with \`finegrain annotate assign\`.`);
    $('token-name').value = '';
  } catch (err) {
    setStatus($('token-status'), 'error', err.message);
  }
});
