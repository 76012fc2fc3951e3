import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One local stack (Temporal dev server + MinIO) and one tiny model for the whole run.
    globalSetup: ['test/globalSetup.ts'],
    // Temporal workers and the trainer are native/child processes: forks isolate them best.
    pool: 'forks',
    // Two files at a time share the stack (each on its own task queues and work folders): much of
    // an integration file is waiting (timers, heartbeat timeouts, process start-up), which the
    // other file's trainer or ONNX work fills. More would only contend for the 2 cores.
    fileParallelism: true,
    maxWorkers: 2,
    testTimeout: 600_000,
    hookTimeout: 600_000,
  },
});
