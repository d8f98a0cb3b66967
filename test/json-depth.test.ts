// exceedsJsonDepth: a linear byte scan that refuses deeply nested JSON before anything parses or walks it.
import { describe, expect, it } from 'vitest';
import { estimatePromptTokens, exceedsJsonDepth, MAX_JSON_DEPTH } from '../src/index.js';
import { safeJsonStringify, valueExceedsDepth } from '../src/json-depth/index.js';

const nested = (depth: number, open = '[', close = ']') => `${open.repeat(depth)}1${close.repeat(depth)}`;

describe('exceedsJsonDepth', () => {
  it('counts objects and arrays, not brackets inside strings', () => {
    expect(MAX_JSON_DEPTH).toBe(64);
    expect(exceedsJsonDepth(nested(64))).toBe(false);
    expect(exceedsJsonDepth(nested(65))).toBe(true);
    expect(exceedsJsonDepth(Buffer.from(nested(400_000)))).toBe(true);
    const object = `${'{"a":'.repeat(70)}1${'}'.repeat(70)}`;
    expect(exceedsJsonDepth(object)).toBe(true);
    expect(exceedsJsonDepth(object, 70)).toBe(false);
    // Brackets and escaped quotes inside strings are text.
    expect(exceedsJsonDepth(JSON.stringify({ text: `${'['.repeat(1000)}\\"{{{` }), 2)).toBe(false);
    expect(exceedsJsonDepth('{"a":[1,{"b":[2]}]}', 4)).toBe(false);
    expect(exceedsJsonDepth('{"a":[1,{"b":[2]}]}', 3)).toBe(true);
  });

  it('walks parsed values without recursion, and never throws when printing them', () => {
    let value: unknown = 'x';
    for (let i = 0; i < 100_000; i++) value = [value];
    expect(valueExceedsDepth(value)).toBe(true);
    expect(safeJsonStringify(value)).toBe('"[nested too deep]"');
    expect(safeJsonStringify({ a: [1, 2] })).toBe('{"a":[1,2]}');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(safeJsonStringify(cyclic)).toBe('"[nested too deep]"');
    // The prompt estimate reads two levels of content at most, however deep.
    expect(estimatePromptTokens({ messages: [{ role: 'user', content: value }] })).toBe(4);
  });
});
