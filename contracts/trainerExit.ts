/**
 * Exit statuses of the Python trainer, read from the generated constants
 * (contracts/trainerContract.generated.ts = schemas/trainer-exit-codes.json, from Python's `ExitCode`).
 * Python names them FINISHED, INVALID_INPUT, ...; TypeScript Finished, InvalidInput, ...
 */
import { TRAINER_EXIT_CODES } from './trainerContract.generated.js';

type PascalCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Capitalize<Lowercase<Head>>}${PascalCase<Tail>}`
  : Capitalize<Lowercase<S>>;

type Codes = typeof TRAINER_EXIT_CODES;

function pascalCase(name: string): string {
  return name
    .toLowerCase()
    .split('_')
    .map((word) => word.charAt(0).toUpperCase() + word.slice(1))
    .join('');
}

export const TrainerExit = Object.fromEntries(
  Object.entries(TRAINER_EXIT_CODES).map(([name, code]) => [pascalCase(name), code]),
) as { readonly [K in keyof Codes as PascalCase<K>]: Codes[K] };

export type TrainerExitCode = Codes[keyof Codes];
