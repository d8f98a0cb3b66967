// `.ci/setup` (what `npm test` runs first) when everything is already there — as it is once it has run: it installs
// nothing, edits nothing, starts nothing, and says nothing. What it would do as root, it says first (checked here on
// its text: each root action is preceded by a line saying so).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');

describe('.ci/setup', () => {
  it('does nothing and prints nothing when the services answer and Chromium is there', () => {
    const result = execFileSync('bash', ['-c', 'bash .ci/setup 2>&1; echo "exit=$?"'], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(result).toBe('exit=0\n');
  });

  it('says what it does as root before it does it, one line each', () => {
    const script = readFileSync(join(root, '.ci/setup'), 'utf8').split('\n');
    const rootActions = script
      .map((line, at) => ({ line: line.trim(), at }))
      .filter(({ line }) => /^as_root (apt-get update|pg_ctlcluster|sed)/.test(line));
    expect(rootActions.length).toBeGreaterThanOrEqual(3);
    for (const { line, at } of rootActions) {
      // The nearest `say` above it, within its block.
      const before = script.slice(Math.max(0, at - 3), at).join('\n');
      expect(before, line).toMatch(/say "[^"]*(root|apt-get|pg_ctlcluster)[^"]*"/);
    }
  });
});
