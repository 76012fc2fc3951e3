import { describe, expect, it } from 'vitest';
import { chooseEvalEngine, EngineChoiceError } from '../../contracts/evalEngine.js';
import { countsFromMetrics, preferenceCounts, preferenceMetrics } from '../../contracts/evalMetrics.js';

describe('evaluate engine choice', () => {
  it('auto scores exportable families with ONNX and Qwen2-VL / Qwen2.5-VL with PyTorch', () => {
    expect(chooseEvalEngine('auto', 'llava').engine).toBe('onnxruntime-node');
    expect(chooseEvalEngine('auto', 'qwen2_5_vl')).toEqual({ engine: 'pytorch', reason: expect.stringContaining('Qwen2.5-VL cannot be exported') });
    expect(chooseEvalEngine('auto', 'qwen2_vl').engine).toBe('pytorch');
  });

  it('pytorch is honoured for any family', () => {
    expect(chooseEvalEngine('pytorch', 'llava')).toEqual({ engine: 'pytorch', reason: 'evaluate.engine is pytorch' });
  });

  it('onnx on a family that cannot export is an error naming the field', () => {
    expect(() => chooseEvalEngine('onnx', 'qwen2_5_vl')).toThrow(EngineChoiceError);
    expect(() => chooseEvalEngine('onnx', 'qwen2_5_vl', 'stage "eval" params.engine')).toThrow(/^stage "eval" params.engine: onnx cannot score Qwen2.5-VL/);
    expect(chooseEvalEngine('onnx', 'idefics2').engine).toBe('onnxruntime-node');
  });

  it('held-out rows with several images go to pytorch under auto, and onnx refuses them by field', () => {
    expect(chooseEvalEngine('auto', 'llava', 'evaluate.engine', 1).engine).toBe('onnxruntime-node');
    expect(chooseEvalEngine('auto', 'llava', 'evaluate.engine', 2)).toEqual({
      engine: 'pytorch',
      reason: 'held-out rows with 2 images cannot be scored through ONNX: the exported graphs take one image per row',
    });
    expect(() => chooseEvalEngine('onnx', 'gemma3_x', 'evaluate.engine', 3)).toThrow(/^evaluate.engine: onnx cannot score held-out rows with 3 images/);
  });
});

describe('counts from the trainer evaluator\'s means', () => {
  it('round-trip through preferenceMetrics', () => {
    const policy = { chosen: [-1.5, -2, -0.25], rejected: [-1, -3, -0.5] };
    const reference = { chosen: [-1.25, -2.5, -0.5], rejected: [-1.5, -2.5, -0.25] };
    const counts = preferenceCounts(policy, reference, 0.1);
    const back = countsFromMetrics(preferenceMetrics(counts));
    expect(back.pairs).toBe(counts.pairs);
    expect(back.preferred).toBe(counts.preferred);
    expect(back.rewardCorrect).toBe(counts.rewardCorrect);
    expect(back.rewardMarginSum).toBeCloseTo(counts.rewardMarginSum, 12);
    expect(back.logpMarginSum).toBeCloseTo(counts.logpMarginSum, 12);
  });
});
