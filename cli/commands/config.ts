/** `dpo validate <config>`, `dpo config-json <config>`, `dpo schema`: configs without a server. */
import { pipelineConfigJsonSchema } from '../../contracts/config.js';
import { requirePositional } from '../errors.js';
import { loadConfigFile } from '../runPipeline.js';

/** Checks a config, listing every problem with its path. */
export async function validateCommand(args: string[]): Promise<number> {
  const { config } = await loadConfigFile(requirePositional(args, 'config file'));
  console.log(`ok: ${config.name} (${config.model.source}, ${config.dataset.source})`);
  return 0;
}

/** Prints the workflow input (for `temporal workflow start --input @file`). */
export async function configJsonCommand(args: string[]): Promise<number> {
  const { raw } = await loadConfigFile(requirePositional(args, 'config file'));
  console.log(JSON.stringify(raw, null, 2));
  return 0;
}

/** Prints the config's JSON Schema. */
export async function schemaCommand(): Promise<number> {
  console.log(JSON.stringify(pipelineConfigJsonSchema(), null, 2));
  return 0;
}
