// Evaluates the same generated features for the same users with the
// official GrowthBook JavaScript SDK, times it, writes results-js.jsonl and
// compares them with results-rust.jsonl.
"use strict";
const fs = require("fs");
const readline = require("readline");
const { GrowthBookClient } = require("@growthbook/growthbook");

async function main() {
  const dir = process.argv[2];
  const iterations = Number(process.argv[3] || 10);
  const payload = JSON.parse(fs.readFileSync(`${dir}/features.json`, "utf8"));
  const users = JSON.parse(fs.readFileSync(`${dir}/users.json`, "utf8"));
  const client = new GrowthBookClient({ enableDevMode: false });
  client.initSync({ payload });
  // Same order as the Rust side (sorted keys).
  const keys = Object.keys(payload.features).sort();
  const contexts = users.map((attributes) => ({ attributes }));

  // Results for the cross-check.
  const out = fs.createWriteStream(`${dir}/results-js.jsonl`);
  for (const ctx of contexts) {
    const line = keys.map((k) => {
      const r = client.evalFeature(k, ctx);
      return [r.value, r.source, r.ruleId, r.experimentResult ? r.experimentResult.variationId : null];
    });
    out.write(JSON.stringify(line) + "\n");
  }
  await new Promise((res) => out.end(res));

  // Timed (after the warm-up above). Two ways of using the SDK for many
  // users; the faster one is reported as the JS number.
  const evals = users.length * keys.length;
  let sink = 0;
  const methods = {
    // client.evalFeature(key, userContext): the multi-user API.
    evalFeature: () => {
      for (const ctx of contexts) {
        for (const k of keys) if (client.evalFeature(k, ctx).on) sink++;
      }
    },
    // One scoped instance per user, then gb.evalFeature(key).
    scopedInstance: () => {
      for (const ctx of contexts) {
        const gb = client.createScopedInstance(ctx);
        for (const k of keys) if (gb.evalFeature(k).on) sink++;
      }
    },
  };
  let best = Infinity;
  let bestMethod = "";
  for (const [name, fn] of Object.entries(methods)) {
    fn(); // warm-up
    let m = Infinity;
    for (let it = 0; it < iterations; it++) {
      const t = process.hrtime.bigint();
      fn();
      m = Math.min(m, Number(process.hrtime.bigint() - t));
    }
    console.log(`  js ${name}: ${(m / evals).toFixed(1)} ns per evaluation`);
    if (m < best) {
      best = m;
      bestMethod = name;
    }
  }
  console.log(
    `js: users=${users.length} features=${keys.length} best_of=${iterations} method=${bestMethod} eval_ms=${(best / 1e6).toFixed(2)} ns_per_eval=${(best / evals).toFixed(1)} sink=${sink}`
  );

  // Compare with the Rust results line by line.
  const a = readline.createInterface({ input: fs.createReadStream(`${dir}/results-rust.jsonl`) });
  const rust = [];
  for await (const line of a) rust.push(JSON.parse(line));
  let mismatches = 0;
  let shown = 0;
  const js = fs.readFileSync(`${dir}/results-js.jsonl`, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  if (rust.length !== js.length) {
    console.log(`mismatch: ${rust.length} Rust lines vs ${js.length} JS lines`);
    mismatches += Math.abs(rust.length - js.length) * keys.length;
  }
  for (let u = 0; u < Math.min(rust.length, js.length); u++) {
    for (let f = 0; f < keys.length; f++) {
      const r = JSON.stringify(rust[u][f]);
      const j = JSON.stringify(js[u][f]);
      if (r !== j) {
        mismatches++;
        if (shown++ < 10) console.log(`  user ${u} feature ${keys[f]}: rust=${r} js=${j}`);
      }
    }
  }
  console.log(`compared: ${rust.length * keys.length} evaluations, mismatches=${mismatches}`);
  process.exitCode = mismatches === 0 ? 0 : 1;
}

main();
