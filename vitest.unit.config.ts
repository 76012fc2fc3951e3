import { defineConfig } from 'vitest/config';

// `npm run test:unit`: pure logic, no Temporal, MinIO or trainer; runs in seconds.
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
  },
});
