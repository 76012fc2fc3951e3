// Renders and tokenizes conversations the way the Node `tokenize` stage does (@huggingface/jinja
// for the chat template, @huggingface/tokenizers for tokenizer.json), so the pytest suite can
// check that Python and Node produce the same token ids for the same model folder.
// Usage: node node_tokenize.mjs MODEL_DIR < cases.json  ->  [{text, ids}] on stdout
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";

const modelDir = process.argv[2];
const tokenizerJson = JSON.parse(readFileSync(join(modelDir, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(readFileSync(join(modelDir, "tokenizer_config.json"), "utf8"));
const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
const template = new Template(tokenizerConfig.chat_template);
const cases = JSON.parse(readFileSync(0, "utf8"));
const out = cases.map((messages) => {
  const text = template.render({ messages, add_generation_prompt: false, bos_token: "<s>", eos_token: "</s>" });
  const ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
  return { text, ids };
});
process.stdout.write(JSON.stringify(out));
