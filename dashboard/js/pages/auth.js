// Signed-out pages: sign-in, the first owner's setup with the bootstrap key, and accepting a team invitation.
import { post } from '../api.js';
import { h } from '../dom.js';
import { navigate } from '../router.js';
import { setSession, signedIn } from '../session.js';
import { button, errorPanel, field, formSummary, input, pageHeader, showErrors, submitting } from '../ui.js';

/** A `next` that stays inside the dashboard (no open redirect). */
function safeNext(query) {
  const next = query.get('next') || '';
  return next.startsWith('/app/') && !next.startsWith('//') ? next : '/app';
}

function card(...children) {
  return h('div', { class: 'card auth-card' }, children);
}

export async function signInPage({ query }) {
  if (signedIn()) {
    navigate(safeNext(query), { replace: true });
    return null;
  }
  const email = input({ type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = input({ type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', {
    class: 'form',
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      if (!email.value.trim() || !password.value) {
        const errors = [];
        if (!email.value.trim()) errors.push({ field: 'email', message: 'Enter your email address.' });
        if (!password.value) errors.push({ field: 'password', message: 'Enter your password.' });
        showErrors(form, { status: 400, errors });
        return;
      }
      const answer = await submitting(form, () => post('/api/v1/auth/login',
        { email: email.value.trim(), password: password.value }, { auth: false }), 'Signing in…');
      if (answer) {
        setSession(answer);
        navigate(safeNext(query), { replace: true });
      }
    },
  },
  formSummary(),
  field({ label: 'Email', control: email, name: 'email' }),
  field({ label: 'Password', control: password, name: 'password' }),
  h('div', { class: 'actions' }, button('Sign in', { type: 'submit', kind: 'primary' })));
  return card(
    pageHeader('Sign in'),
    query.get('expired') ? h('p', { class: 'notice', role: 'status' }, 'Your session ended. Sign in again to continue.') : null,
    form,
    h('p', { class: 'muted' }, 'Setting up Flywheel for the first time? ',
      h('a', { href: '/app/setup' }, 'Create the first owner'), ' with the bootstrap key printed at the first start.'),
    h('p', { class: 'muted' }, 'Invited by a colleague? Open the invitation link they sent you.'));
}

export async function setupPage() {
  const key = input({ type: 'password', name: 'bootstrap_key', autocomplete: 'off', required: true, spellcheck: 'false' });
  const name = input({ name: 'name', autocomplete: 'name' });
  const email = input({ type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = input({ type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: '10' });
  const form = h('form', {
    class: 'form',
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      if (!key.value.trim()) {
        showErrors(form, { status: 400, errors: [{ field: 'bootstrap_key', message: 'Paste the bootstrap key (fwsec_…).' }] });
        return;
      }
      const answer = await submitting(form, async () => {
        try {
          return await post('/api/v1/auth/setup', { email: email.value.trim(), password: password.value, name: name.value.trim() },
            { auth: false, headers: { Authorization: `Bearer ${key.value.trim()}` } });
        } catch (err) {
          // A wrong key is the key field's problem.
          if (err.code === 'invalid_api_key' || err.code === 'setup_needs_organization_key') {
            err.errors = [{ field: 'bootstrap_key', message: err.message }];
            err.status = 400;
          }
          throw err;
        }
      }, 'Creating…');
      if (answer) {
        setSession(answer);
        navigate('/app', { replace: true });
      }
    },
  },
  formSummary(),
  field({ label: 'Bootstrap key', control: key, name: 'bootstrap_key', hint: 'The personal API key (fwsec_…) Flywheel printed when it first started. It is used once, here.' }),
  field({ label: 'Your name', control: name, name: 'name', hint: 'Optional.' }),
  field({ label: 'Email', control: email, name: 'email' }),
  field({ label: 'Password', control: password, name: 'password', hint: 'At least 10 characters; a passphrase is best.' }),
  h('div', { class: 'actions' }, button('Create the owner and sign in', { type: 'submit', kind: 'primary' })));
  return card(
    pageHeader('Set up the first owner', { subtitle: 'Become the owner of the organization Flywheel created on its first start.' }),
    form,
    h('p', { class: 'muted' }, 'Already set up? ', h('a', { href: '/app/signin' }, 'Sign in'), '.'));
}

export async function acceptPage({ query }) {
  const token = (query.get('token') || '').trim();
  if (!token) {
    return card(pageHeader('Accept an invitation'),
      errorPanel({ status: 400, message: 'This invitation link has no token. Open the whole link from your invitation, or ask for a new one.' }));
  }
  // What the invitation is for, before asking anything.
  let info;
  try {
    info = await post('/api/v1/auth/invitation', { token }, { auth: false });
  } catch (err) {
    return card(pageHeader('Accept an invitation'),
      errorPanel(err.status === 404
        ? { status: 404, message: 'This invitation link is not valid. Open the whole link from your invitation, or ask for a new one.' }
        : err));
  }
  if (info.status !== 'pending') {
    const why = { accepted: 'was already accepted: sign in instead', revoked: 'was revoked', expired: 'has expired' }[info.status] || info.status;
    return card(pageHeader('Accept an invitation'),
      errorPanel({ status: 410, message: `This invitation to ${info.organization_name || 'the organization'} ${why}. Ask an admin for a new one if you still need access.` }),
      h('p', { class: 'muted' }, h('a', { href: '/app/signin' }, 'Sign in'), '.'));
  }
  const existing = info.user_exists;
  const name = input({ name: 'name', autocomplete: 'name' });
  const password = input({ type: 'password', name: 'password', autocomplete: existing ? 'current-password' : 'new-password', required: true });
  const form = h('form', {
    class: 'form',
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const answer = await submitting(form, async () => {
        try {
          return await post('/api/v1/auth/accept-invitation', { token, password: password.value, name: name.value.trim() }, { auth: false });
        } catch (err) {
          if (err.status === 401) {
            err.errors = [{ field: 'password', message: 'This email already has an account: enter its current password.' }];
            err.status = 400;
          }
          throw err;
        }
      }, 'Joining…');
      if (answer) {
        setSession(answer);
        navigate('/app', { replace: true });
      }
    },
  },
  formSummary(),
  h('dl', { class: 'facts', 'data-invitation': '' },
    h('dt', 'Organization'), h('dd', info.organization_name || `#${info.organization_id}`),
    h('dt', 'Email'), h('dd', info.email),
    h('dt', 'Role'), h('dd', info.role)),
  existing ? null : field({ label: 'Your name', control: name, name: 'name', hint: 'Optional.' }),
  field({ label: 'Password', control: password, name: 'password',
    hint: existing
      ? `${info.email} already has an account: enter its password.`
      : 'Choose a password of at least 10 characters; a passphrase is best.' }),
  h('div', { class: 'actions' }, button('Accept and sign in', { type: 'submit', kind: 'primary' })));
  return card(pageHeader('Accept your invitation', {
    subtitle: `Join ${info.organization_name || 'your team'} on Flywheel as ${info.role}.`,
  }), form);
}
