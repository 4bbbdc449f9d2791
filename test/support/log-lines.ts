/**
 * The top-level keys a JSON object's text names more than once. JSON.parse keeps the last of them, so a
 * repeated binding (a child logger naming a field its parent already named) is invisible once parsed;
 * log shippers disagree about which one wins, or reject the line.
 */
export function repeatedKeys(text: string): string[] {
  const seen = new Set<string>();
  const repeated = new Set<string>();
  let depth = 0;
  for (let at = 0; at < text.length; at++) {
    const char = text[at];
    if (char === '{' || char === '[') depth += 1;
    else if (char === '}' || char === ']') depth -= 1;
    else if (char === '"') {
      const end = stringEnd(text, at);
      if (depth === 1 && /^\s*:/.test(text.slice(end + 1, end + 8))) {
        const key = JSON.parse(text.slice(at, end + 1)) as string;
        if (seen.has(key)) repeated.add(key);
        seen.add(key);
      }
      at = end;
    }
  }
  return [...repeated];
}

/** The index of the quote that closes the string opening at `start`. */
function stringEnd(text: string, start: number): number {
  for (let at = start + 1; at < text.length; at++) {
    if (text[at] === '\\') at += 1;
    else if (text[at] === '"') return at;
  }
  throw new Error(`unterminated string in ${text.slice(0, 200)}`);
}
