// Parse mermaid text with the real mermaid parser under Node, without a browser.
//
// Usage: node mermaid_parse.mjs PREFIX FILE...
//   PREFIX  the folder given to `npm install --prefix PREFIX mermaid@11 jsdom`,
//           or its node_modules/ (dev.py installs into .cache/node)
//   FILE    mermaid text ("-" reads stdin)
//
// Prints one JSON line per file. On success:
//   {"file", "ok": true, "diagramType", "states": {id: [classes]},
//    "labels": {id: [descriptions]}, "relations": [[from, to, label]],
//    "classDefs": {name: [styles]}}
// ("[*]" start markers appear as "root_start"). On a parse error:
//   {"file", "ok": false, "error"}
// and the exit code is 1. Any other failure (mermaid not installed) exits 2.
//
// mermaid needs a DOM for DOMPurify even just to parse, so a jsdom window is
// installed as the global window/document first. Everything runs offline once
// the npm packages are installed.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, ...files] = process.argv.slice(2);
if (!prefix || files.length === 0) {
  console.error("usage: node mermaid_parse.mjs PREFIX FILE...");
  process.exit(2);
}

let mermaid;
try {
  const require = createRequire(join(resolve(prefix), "package.json"));
  const { JSDOM } = require(require.resolve("jsdom"));
  const dom = new JSDOM("<!DOCTYPE html><html><body></body></html>");
  globalThis.window = dom.window;
  globalThis.document = dom.window.document;
  mermaid = (await import(pathToFileURL(require.resolve("mermaid")).href)).default;
} catch (err) {
  console.error(`cannot load mermaid and jsdom from ${prefix}: ${err.message}`);
  process.exit(2);
}

// The databases hold Maps in some mermaid releases and plain objects in others.
const entries = (m) => (m instanceof Map ? [...m.entries()] : Object.entries(m ?? {}));

let failed = false;
for (const file of files) {
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  try {
    const { diagramType } = await mermaid.parse(text);
    // parse() only says yes or no; the diagram's database says what it holds.
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
    const db = diagram.db;
    // Some mermaid 11 releases fill the state database only when the renderer
    // extracts the parsed document; do what the renderer does.
    if (entries(db.getStates()).length === 0 && db.extract && db.getRootDocV2) {
      db.extract(db.getRootDocV2());
    }
    const states = {};
    const labels = {};
    for (const [id, state] of entries(db.getStates())) {
      states[id] = [...state.classes];
      if (state.descriptions.length > 0) {
        labels[id] = [...state.descriptions];
      }
    }
    const relations = db.getRelations().map((r) => [r.id1, r.id2, r.relationTitle ?? ""]);
    const classDefs = {};
    for (const [name, def] of entries(db.getClasses())) {
      classDefs[name] = [...def.styles];
    }
    console.log(JSON.stringify({ file, ok: true, diagramType, states, labels, relations, classDefs }));
  } catch (err) {
    failed = true;
    console.log(JSON.stringify({ file, ok: false, error: String(err.message ?? err) }));
  }
}
process.exit(failed ? 1 : 0);
