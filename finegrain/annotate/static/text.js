// Pure text helpers for the annotation pages: offsets, word snapping, word diff.
// Offsets leave the browser as Unicode code points into the NFC-normalised response; the browser
// measures in UTF-16 code units. toCodePointOffset is the only place that converts between them.

/** The response as the server stores it; spans index into this string's code points. */
export function normalise(text) {
  return text.normalize('NFC');
}

/** The code points of `text` (an astral character such as an emoji is ONE element). */
export function codePoints(text) {
  return Array.from(text);
}

/**
 * The code-point offset of the UTF-16 offset `utf16` in `text`.
 * An offset inside a surrogate pair counts the whole character as before it.
 */
export function toCodePointOffset(text, utf16) {
  if (!Number.isInteger(utf16) || utf16 < 0 || utf16 > text.length) {
    throw new RangeError(`UTF-16 offset ${utf16} outside a text of ${text.length} code units`);
  }
  return Array.from(text.slice(0, utf16)).length;
}

// Letters, digits, combining marks and emoji (with their modifiers and joiners) make up words, so
// snapping never splits a word, an accented letter or a multi-character emoji.
const WORD = /[\p{L}\p{N}\p{M}\p{Extended_Pictographic}\p{Emoji_Modifier}\u200d\ufe0f_]/u;
// Apostrophes and hyphens are part of a word only between two word characters (don't, well-known).
const JOINER = /['\u2019\-]/u;
const TRIM = /[\s\p{P}]/u;

function isWordAt(cps, i) {
  if (i < 0 || i >= cps.length) return false;
  if (WORD.test(cps[i])) return true;
  return JOINER.test(cps[i]) && i > 0 && i + 1 < cps.length
    && WORD.test(cps[i - 1]) && WORD.test(cps[i + 1]);
}

/**
 * Snap a selection [start, end) given in code points: trim surrounding spaces and punctuation,
 * then widen to whole words. `precise` keeps the selection exactly as made (Shift held).
 * Returns {start, end} or null when nothing but spaces/punctuation was selected.
 */
export function snapToWords(cps, start, end, precise = false) {
  if (start > end) [start, end] = [end, start];
  start = Math.max(0, start);
  end = Math.min(cps.length, end);
  if (precise) return start < end ? { start, end } : null;
  while (start < end && TRIM.test(cps[start]) && !isWordAt(cps, start)) start += 1;
  while (end > start && TRIM.test(cps[end - 1]) && !isWordAt(cps, end - 1)) end -= 1;
  if (start >= end) return null;
  while (start > 0 && isWordAt(cps, start) && isWordAt(cps, start - 1)) start -= 1;
  while (end < cps.length && isWordAt(cps, end - 1) && isWordAt(cps, end)) end += 1;
  return { start, end };
}

/** Whitespace-separated tokens of `text`, each with the spaces that follow it (so they rejoin exactly). */
export function wordTokens(text) {
  return text.match(/\s+|\S+\s*/gu)?.reduce((acc, tok) => {
    if (/^\s+$/u.test(tok) && acc.length) acc[acc.length - 1] += tok;
    else acc.push(tok);
    return acc;
  }, []) ?? [];
}

/**
 * Word diff of two texts by longest common subsequence of words (compared without trailing spaces).
 * Returns {left: [{text, kind}], right: [{text, kind}]} with kind "same" | "del" (only in left) |
 * "ins" (only in right); concatenating a side's texts gives back that text.
 */
export function wordDiff(a, b) {
  const x = wordTokens(a), y = wordTokens(b);
  const key = (t) => t.trimEnd();
  const n = x.length, m = y.length;
  // lcs[i][j]: length of the LCS of x[i:] and y[j:]
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lcs[i][j] = key(x[i]) === key(y[j]) ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const left = [], right = [];
  const push = (side, text, kind) => {
    const last = side[side.length - 1];
    if (last && last.kind === kind) last.text += text;
    else side.push({ text, kind });
  };
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && key(x[i]) === key(y[j])) {
      push(left, x[i], 'same'); push(right, y[j], 'same'); i += 1; j += 1;
    } else if (j >= m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1])) {
      push(left, x[i], 'del'); i += 1;
    } else {
      push(right, y[j], 'ins'); j += 1;
    }
  }
  return { left, right };
}
