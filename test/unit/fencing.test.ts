import { describe, expect, it } from 'vitest';
import { publishedWhileCurrent } from '../../io/fencing.js';
import { keys, parseCheckpointName, parseFencedCheckpointName } from '../../contracts/keys.js';

describe('checkpoint fencing', () => {
  it('names checkpoints by step and fence token, and still reads unfenced names', () => {
    const prefix = keys.fencedCheckpointPrefix('run', 'train', 12, 1795831680017);
    expect(prefix).toBe('runs/run/train/checkpoints/step-00000012.f001795831680017/');
    expect(parseFencedCheckpointName('step-00000012.f001795831680017')).toEqual({ step: 12, token: 1795831680017 });
    expect(parseFencedCheckpointName('step-00000012')).toEqual({ step: 12, token: null });
    expect(parseCheckpointName('step-00000012.f001795831680017')).toBe(12);
    expect(parseFencedCheckpointName('step-00000012.fxyz')).toBeUndefined();
  });

  it('uses a checkpoint only if its manifest predates every newer fence', () => {
    const fences = [
      { token: 100, writtenAt: 1_000 },
      { token: 200, writtenAt: 5_000 },
    ];
    expect(publishedWhileCurrent(100, 4_999, fences)).toBe(true);
    expect(publishedWhileCurrent(100, 5_000, fences)).toBe(false); // a tie counts as too late
    expect(publishedWhileCurrent(100, 9_000, fences)).toBe(false); // a zombie's late manifest
    expect(publishedWhileCurrent(200, 9_000, fences)).toBe(true); // the newest attempt is never superseded
    expect(publishedWhileCurrent(100, undefined, fences)).toBe(false);
    expect(publishedWhileCurrent(null, 9_000, fences)).toBe(true); // checkpoints of older, unfenced runs
  });
});
