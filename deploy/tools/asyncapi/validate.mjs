// Validate AsyncAPI documents with the official parser (@asyncapi/parser, pinned
// by package-lock.json here and installed by deploy/tools/install.sh into
// .dev/tools/asyncapi, or NEXTBEST_ASYNCAPI_MODULES).
//
//   node deploy/tools/asyncapi/validate.mjs docs/asyncapi.yaml [more files...]
//
// Prints each error and warning (file: path: message) and one summary line per
// document. Exit status 1 when any document has an error or a warning, 2 when
// the parser is not installed, else 0.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.NEXTBEST_ASYNCAPI_MODULES
  ?? path.join(process.env.NEXTBEST_TOOLS_DIR ?? path.join(here, '../../../.dev/tools'), 'asyncapi');
let parserModule;
try {
  parserModule = createRequire(path.join(modules, 'package.json'))('@asyncapi/parser');
} catch (error) {
  console.error(`asyncapi: @asyncapi/parser is not installed in ${modules}: run deploy/tools/install.sh`);
  process.exit(2);
}
const { Parser, fromFile } = parserModule;
const SEVERITY = ['error', 'warning', 'info', 'hint'];
const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  const serious = diagnostics.filter((d) => d.severity <= 1);
  for (const d of serious) {
    console.log(`${file}: ${SEVERITY[d.severity]}: ${d.path.join('/') || '(root)'}: ${d.message} [${d.code}]`);
  }
  if (document === undefined || serious.length > 0) {
    failed = true;
    console.log(`${file}: NOT valid (${serious.length} errors and warnings)`);
    continue;
  }
  const version = document.version();
  const channels = document.channels().length;
  const operations = document.operations().length;
  const messages = document.allMessages().length;
  console.log(`${file}: valid AsyncAPI ${version} (${channels} channels, ${operations} operations, ${messages} messages)`);
}
process.exit(failed ? 1 : 0);
