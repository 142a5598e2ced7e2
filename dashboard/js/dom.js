// Building DOM nodes without innerHTML: text is always text (no markup injection), and the CSP forbids inline
// styles and scripts, so nothing here writes a `style` attribute or an inline handler.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(parent, child) {
  if (child === null || child === undefined || child === false || child === true) return;
  if (Array.isArray(child)) {
    for (const c of child) append(parent, c);
  } else if (child instanceof Node) {
    parent.appendChild(child);
  } else {
    parent.appendChild(document.createTextNode(String(child)));
  }
}

// Properties rather than attributes for these, so that a re-render keeps what the browser shows in sync.
const PROPS = new Set(['value', 'checked', 'selected', 'disabled', 'hidden', 'required', 'readOnly', 'multiple', 'indeterminate']);

function setProps(el, props, svg) {
  if (!props) return;
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name.startsWith('aria-')) {
      el.setAttribute(name, String(value));
      continue;
    }
    if (value === false && !PROPS.has(name)) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'class') {
      const cls = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
      if (cls) el.setAttribute('class', cls);
    } else if (name === 'ref' && typeof value === 'function') {
      value(el);
    } else if (!svg && PROPS.has(name)) {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

/** An HTML element: `h('button', {class: 'btn', onclick}, 'Save')`. */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), false, props, children);
}

/** An SVG element: `s('g', {class: 'series'}, …)`; like `h`, the properties may be left out. */
export function s(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), true, props, children);
}

function build(el, svg, props, children) {
  if (props !== null && props !== undefined && (props instanceof Node || Array.isArray(props) || typeof props !== 'object')) {
    children.unshift(props);
    props = null;
  }
  setProps(el, props, svg);
  append(el, children);
  return el;
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let counter = 0;
/** A unique id for label/description wiring. */
export function uid(prefix = 'f') {
  counter += 1;
  return `${prefix}-${counter}`;
}
