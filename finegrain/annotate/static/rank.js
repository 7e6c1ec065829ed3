// Pure helpers for pairwise judgements. A judgement is {a, b, outcome} with outcome in terms of
// (a, b): 1 = a better, 2 = b better, 0 = equal.

/** score(x, y): 1 if x beats y, -1 if y beats x, 0 if equal, null if the pair is not judged. */
function scorer(judgements) {
  const table = new Map();
  for (const { a, b, outcome } of judgements) {
    const s = outcome === 1 ? 1 : outcome === 2 ? -1 : 0;
    table.set(`${a},${b}`, s);
    table.set(`${b},${a}`, -s);
  }
  return (x, y) => (table.has(`${x},${y}`) ? table.get(`${x},${y}`) : null);
}

/**
 * Triples of responses whose judgements cannot come from one ranking (ties allowed), e.g.
 * x > y, y > z but z > x, or x = y, y = z but x > z. Returns [[x, y, z], ...] with x beating or
 * tying y and y beating or tying z, while x does not come out at least as good as z the same way.
 */
export function intransitiveTriples(judgements, items) {
  const score = scorer(judgements);
  const found = [];
  const seen = new Set();
  for (const x of items) for (const y of items) for (const z of items) {
    if (x === y || y === z || x === z) continue;
    const xy = score(x, y), yz = score(y, z), xz = score(x, z);
    if (xy === null || yz === null || xz === null || xy < 0 || yz < 0) continue;
    // x >= y >= z implies x >= z, strictly if either step is strict
    const needed = xy > 0 || yz > 0 ? 1 : 0;
    if (xz !== needed) {
      const id = [x, y, z].slice().sort((p, q) => p - q).join(',');
      if (!seen.has(id)) { seen.add(id); found.push([x, y, z]); }
    }
  }
  return found;
}

/** Items ordered by wins (+1) minus losses, ties in score share a rank: [[x], [y, z], ...]. */
export function derivedRanking(judgements, items) {
  const points = new Map(items.map((i) => [i, 0]));
  for (const { a, b, outcome } of judgements) {
    if (outcome === 1) { points.set(a, points.get(a) + 1); points.set(b, points.get(b) - 1); }
    if (outcome === 2) { points.set(b, points.get(b) + 1); points.set(a, points.get(a) - 1); }
  }
  const groups = new Map();
  for (const [item, p] of points) groups.set(p, [...(groups.get(p) ?? []), item]);
  return [...groups.entries()].sort((p, q) => q[0] - p[0]).map(([, g]) => g.sort((p, q) => p - q));
}

/** The outcome in terms of (a, b) for a choice made on screen: "left" | "equal" | "right". */
export function outcomeFor(pair, choice) {
  if (choice === 'equal') return 0;
  const winner = choice === 'left' ? pair.left : pair.right;
  return winner === pair.a ? 1 : 2;
}

/** The on-screen choice for a stored outcome, the inverse of outcomeFor. */
export function choiceFor(pair, outcome) {
  if (outcome === 0) return 'equal';
  const winner = outcome === 1 ? pair.a : pair.b;
  return winner === pair.left ? 'left' : 'right';
}
