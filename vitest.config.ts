import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One local stack (Temporal dev server + MinIO) and one tiny model for the whole run.
    globalSetup: ['test/globalSetup.ts'],
    // Temporal workers and the trainer are native/child processes: forks isolate them best.
    pool: 'forks',
    // 2 cores: integration files run one at a time, each sharing the stack.
    fileParallelism: false,
    testTimeout: 600_000,
    hookTimeout: 600_000,
  },
});
