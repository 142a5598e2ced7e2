// Differential check of the condition language: evaluates the random
// conditions written by `bench_users conditions DIR N` with the GrowthBook
// JavaScript SDK's evalCondition and counts disagreements with the Rust
// verdicts. Usage: node diff_conditions.js DIR
"use strict";
const fs = require("fs");
const { evalCondition } = require("@growthbook/growthbook");

const dir = process.argv[2];
const lines = fs.readFileSync(`${dir}/conditions.jsonl`, "utf8").trim().split("\n");
const groups = JSON.parse(fs.readFileSync(`${dir}/groups.json`, "utf8"));
let mismatches = 0;
const byKind = {};
for (const line of lines) {
  const [cond, attrs, rust] = JSON.parse(line);
  let js;
  try {
    js = evalCondition(JSON.parse(JSON.stringify(attrs)), cond, groups);
  } catch (e) {
    js = `throws: ${e.message}`;
  }
  if (js !== rust) {
    mismatches++;
    const kind = JSON.stringify(cond).match(/"\$[a-zA-Z]+"/g)?.join(",") || "plain";
    byKind[kind] = (byKind[kind] || 0) + 1;
    if (mismatches <= 15) console.log(`cond=${JSON.stringify(cond)} attrs=${JSON.stringify(attrs)} rust=${rust} js=${js}`);
  }
}
console.log(`conditions: ${lines.length}, mismatches: ${mismatches}`);
const top = Object.entries(byKind).sort((a, b) => b[1] - a[1]).slice(0, 10);
for (const [k, n] of top) console.log(`  ${n}\t${k}`);
