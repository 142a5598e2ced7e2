// Code to read this flag from the SDKs Flywheel serves: GrowthBook, PostHog and OpenFeature (OFREP). SDK keys are
// shown once when created, so the snippets name the connection's key prefix until the full key is pasted here
// (it stays in this page, nothing is stored).
import { h, mount } from '../dom.js';
import { app } from '../shell.js';
import { button, emptyState, field, input, select, toast } from '../ui.js';

const q = (v) => JSON.stringify(v);

function growthbookJs(origin, key, doc) {
  const read = doc.value_type === 'boolean'
    ? `if (gb.isOn(${q(doc.key)})) {\n  // the feature is on for this user\n}`
    : `const value = gb.getFeatureValue(${q(doc.key)}, ${q(doc.default_value)});`;
  return `import { GrowthBook } from "@growthbook/growthbook";

const gb = new GrowthBook({
  apiHost: ${q(origin)},
  clientKey: ${q(key)},
  attributes: { id: "user-123" },
});
await gb.init({ streaming: true });

${read}`;
}

function growthbookPython(origin, key, doc) {
  const read = doc.value_type === 'boolean'
    ? `if gb.is_on(${q(doc.key)}):\n    ...  # the feature is on for this user`
    : `value = gb.get_feature_value(${q(doc.key)}, ${pyLiteral(doc.default_value)})`;
  return `from growthbook import GrowthBook

gb = GrowthBook(api_host=${q(origin)}, client_key=${q(key)}, attributes={"id": "user-123"})
gb.load_features()

${read}`;
}

function pyLiteral(v) {
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (v === null) return 'None';
  return JSON.stringify(v);
}

function posthogJs(origin, key, doc) {
  const read = {
    boolean: `if (posthog.isFeatureEnabled(${q(doc.key)})) {\n  // the feature is on for this user\n}`,
    string: `const variant = posthog.getFeatureFlag(${q(doc.key)});`,
  }[doc.value_type] || `const value = posthog.getFeatureFlagPayload(${q(doc.key)});`;
  return `import posthog from "posthog-js";

posthog.init(${q(key)}, { api_host: ${q(origin)} });
posthog.identify("user-123");

posthog.onFeatureFlags(() => {
  ${read.replace(/\n/g, '\n  ')}
});`;
}

function posthogPython(origin, key, doc) {
  const read = {
    boolean: `if client.feature_enabled(${q(doc.key)}, "user-123"):\n    ...  # the feature is on for this user`,
    string: `variant = client.get_feature_flag(${q(doc.key)}, "user-123")`,
  }[doc.value_type] || `value = client.get_feature_flag_payload(${q(doc.key)}, "user-123")`;
  return `from posthog import Posthog

client = Posthog(${q(key)}, host=${q(origin)})

${read}`;
}

function openFeatureJs(origin, key, doc) {
  const method = { boolean: 'getBooleanValue', string: 'getStringValue', number: 'getNumberValue', json: 'getObjectValue' }[doc.value_type];
  return `import { OpenFeature } from "@openfeature/web-sdk";
import { OFREPWebProvider } from "@openfeature/ofrep-web-provider";

await OpenFeature.setContext({ targetingKey: "user-123" });
await OpenFeature.setProviderAndWait(new OFREPWebProvider({
  baseUrl: ${q(origin)},
  headers: [["Authorization", ${q(`Bearer ${key}`)}]],
}));

const client = OpenFeature.getClient();
const value = client.${method}(${q(doc.key)}, ${q(doc.default_value)});`;
}

function snippet(title, language, code) {
  const pre = h('pre', { class: 'code', tabindex: '0', 'aria-label': `${title} code` }, h('code', { 'data-language': language }, code));
  return h('section', { class: 'card snippet', 'aria-label': title },
    h('div', { class: 'snippet-head' }, h('h3', title),
      button('Copy', {
        class: 'btn btn-secondary btn-small', 'aria-label': `Copy the ${title} code`,
        onclick: async () => {
          try {
            await navigator.clipboard.writeText(code);
            toast('Copied to the clipboard.');
          } catch {
            toast('The clipboard is not available: select the code and copy it.', 'info');
          }
        },
      })),
    pre);
}

export function snippets(doc, connections) {
  const origin = location.origin;
  const box = h('div', { class: 'stack' });
  if (!connections.length) {
    return emptyState('No SDK connection yet',
      'SDKs read flags with an SDK key that serves one environment. Create one, then come back for ready-to-paste code.',
      h('a', { href: app.path('/settings/sdk'), class: 'btn btn-primary' }, 'Create an SDK connection'));
  }
  let conn = connections[0];
  let pasted = '';
  const keyText = () => pasted.trim() || `${conn.key_prefix}…`;
  const render = () => {
    const key = keyText();
    mount(box,
      snippet('GrowthBook (JavaScript)', 'javascript', growthbookJs(origin, key, doc)),
      snippet('GrowthBook (Python)', 'python', growthbookPython(origin, key, doc)),
      snippet('PostHog (JavaScript)', 'javascript', posthogJs(origin, key, doc)),
      snippet('PostHog (Python, server-side evaluation)', 'python', posthogPython(origin, key, doc)),
      snippet('OpenFeature (web SDK with the OFREP provider)', 'javascript', openFeatureJs(origin, key, doc)));
  };
  const connSel = select(connections.map((c) => [String(c.id), `${c.name || 'Unnamed'} — ${c.environment} (${c.key_prefix}…)`]), String(conn.id), {
    onchange: (e) => { conn = connections.find((c) => String(c.id) === e.target.value); render(); },
  });
  const keyInput = input({
    type: 'password', autocomplete: 'off', spellcheck: 'false', placeholder: 'sdk-…',
    oninput: (e) => { pasted = e.target.value; render(); },
  });
  render();
  return h('div', { class: 'stack' },
    h('div', { class: 'card' },
      h('h2', 'Use this flag in code'),
      h('div', { class: 'grid-2' },
        field({ label: 'SDK connection', control: connSel, hint: 'Its environment decides the rules served.' }),
        field({ label: 'Full SDK key (optional)', control: keyInput, hint: 'Shown once when the connection was created. Paste it to fill the snippets; it is not stored.' }))),
    box);
}
