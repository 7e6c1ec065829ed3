// Shared by every page: page data, DOM building from text only, the JSON API with CSRF,
// retries with the same idempotency key, and the visible save/submit state.

/** The page's data, which the server embeds as JSON in <script id="page-data">. */
export function pageData() {
  const node = document.getElementById('page-data');
  return node ? JSON.parse(node.textContent) : {};
}

/**
 * A new element. Children that are strings become text nodes, so data is never parsed as HTML.
 * `opts`: {cls, text, attrs, on: {event: handler}}.
 */
export function h(tag, opts = {}, ...children) {
  const node = document.createElement(tag);
  if (opts.cls) node.className = opts.cls;
  if (opts.text !== undefined) node.textContent = String(opts.text);
  for (const [name, value] of Object.entries(opts.attrs ?? {})) node.setAttribute(name, String(value));
  for (const [event, handler] of Object.entries(opts.on ?? {})) node.addEventListener(event, handler);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** Only same-site paths are followed from page data ("/task/3"), never "javascript:" or "//host". */
export function safePath(url) {
  return typeof url === 'string' && url.startsWith('/') && !url.startsWith('//') ? url : '#';
}

/** A random idempotency key; crypto.randomUUID needs a secure context, getRandomValues does not. */
export function newKey() {
  if (window.crypto?.randomUUID) return window.crypto.randomUUID();
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** An answer from the server that the annotator must see (4xx), or a session that ended (401). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * POST `body` as JSON with the CSRF header. Network failures and 5xx answers are retried with the
 * SAME body (hence the same idempotency key), so a submission that reached the server but whose
 * answer was lost is stored once. 401 sends the browser to /login; other 4xx throw ApiError with
 * the server's message. `onRetry(attempt, delayMs)` lets the page show that it is retrying.
 */
export async function postJSON(url, body, csrf, { retries = 6, onRetry = () => {} } = {}) {
  const payload = JSON.stringify(body);
  for (let attempt = 0; ; attempt += 1) {
    let response = null;
    try {
      response = await fetch(url, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf ?? '' },
        body: payload,
      });
    } catch (err) {
      response = null; // network failure: retry below
    }
    if (response && response.status < 500) {
      let data = {};
      try { data = await response.json(); } catch (err) { data = {}; }
      if (response.ok) return data;
      if (response.status === 401) {
        window.location.assign('/login');
        throw new ApiError(401, 'Your session has ended; please log in again.');
      }
      throw new ApiError(response.status, data.error ?? `The server refused the request (${response.status}).`);
    }
    if (attempt >= retries) {
      throw new ApiError(0, response
        ? `The server failed (${response.status}); your work is kept in this page, try again.`
        : 'No connection to the server; your work is kept in this page, try again.');
    }
    const delay = Math.min(8000, 500 * 2 ** attempt);
    onRetry(attempt + 1, delay);
    await sleep(delay);
  }
}

/** The status line under a form: kind is "idle" | "busy" | "ok" | "error" | "warn". */
export function setStatus(node, kind, text) {
  node.className = `status status-${kind}`;
  node.textContent = text;
}

/** Call `fn` once `ms` after the last of a burst of calls; `flush()` runs a pending call now. */
export function debounce(fn, ms) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
  debounced.pending = () => timer !== null;
  debounced.cancel = () => { clearTimeout(timer); timer = null; };
  debounced.flush = () => {
    if (timer !== null) { clearTimeout(timer); timer = null; fn(); }
  };
  return debounced;
}

/** True when a key press is typed into a form field, where page shortcuts must not fire. */
export function typingIn(event) {
  const t = event.target;
  return t instanceof HTMLElement
    && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName));
}

/** Handle 409 / other errors of a submission the same way on every task page. */
export function explainError(err) {
  if (err instanceof ApiError && err.status === 409) {
    return `Someone or something saved a newer version of this task since you opened it: ${err.message} `
      + 'Reload the page to see it.';
  }
  return err.message;
}

/** Show a submission error; after a 409 offer a reload (which shows the newer version). */
export function showSubmitError(node, err) {
  setStatus(node, 'error', explainError(err));
  if (err instanceof ApiError && err.status === 409) {
    node.append(' ', h('button', { text: 'Reload', attrs: { type: 'button' }, on: { click: () => window.location.reload() } }));
  }
}

/** Fill the header's user slot and a logout button (POST /logout with the CSRF header). */
export function fillHeader(data) {
  const slot = document.getElementById('who');
  if (!slot) return;
  if (data.user) slot.append(h('span', { cls: 'who-name', text: data.user }));
  if (data.role === 'admin') slot.append(h('a', { attrs: { href: '/admin' }, text: 'Admin' }));
  if (data.role === 'admin' || data.role === 'reviewer') slot.append(h('a', { attrs: { href: '/review' }, text: 'Review' }));
  const csrf = data.csrf_token ?? data.csrf;
  if (csrf) {
    slot.append(h('button', {
      cls: 'link', text: 'Log out',
      on: {
        click: async () => {
          try { await postJSON('/logout', {}, csrf, { retries: 0 }); } catch (err) { /* ends anyway */ }
          window.location.assign('/login');
        },
      },
    }));
  }
}
