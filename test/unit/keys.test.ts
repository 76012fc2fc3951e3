import { describe, expect, it } from 'vitest';
import { checkpointName, isSafeKeySegment, keys, parseCheckpointName } from '../../contracts/keys.js';

describe('storage keys', () => {
  it('refuses names that could escape their prefix', () => {
    for (const bad of ['..', '.', '../x', 'a/b', '/abs', '', 'x y', 'a\\b', 'é', 'a'.repeat(129)]) {
      expect(isSafeKeySegment(bad), bad).toBe(false);
    }
    for (const good of ['run-1', 'demo_shapes.2026', 'A9']) expect(isSafeKeySegment(good)).toBe(true);
    expect(() => keys.runPrefix('../other-run')).toThrow(/not a safe storage name/);
  });

  it('orders checkpoints lexically by step', () => {
    expect(checkpointName(100)).toBe('step-00000100');
    expect(parseCheckpointName('step-00000100')).toBe(100);
    expect(parseCheckpointName('step-100.tmp')).toBeUndefined();
    expect([checkpointName(20), checkpointName(100)].sort()).toEqual([checkpointName(20), checkpointName(100)]);
  });
});
