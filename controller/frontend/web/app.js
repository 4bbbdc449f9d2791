// Manticore's web page: start a session from a template, follow it live, copy its addresses, keep it
// alive, end it. Plain ES2020 in the browser, no framework and no build step; it talks only to the REST API
// of the origin that served it (the user is the anonymous cookie or whatever the front end's authenticator
// makes of the request).

const api = '/api/v1';
/** How often a session is read when its event stream is unavailable (proxies that break server-sent events). */
const pollIntervalMs = 2000;
/** The longest wait between reads of the session while the front end does not answer. */
const maxRetryMs = 10_000;
/** The stream sends the session as soon as it connects; nothing by then means something in between holds it back. */
const firstEventTimeoutMs = 10_000;
/** A stream refused for the user's open pages (429) is tried again this often: another page may have closed. */
const refusedStreamRetryMs = 30_000;
/** The conditions shown as the start-up checklist, in the order a session passes them. */
const steps = [
  ['Admitted', 'A place in the cluster'],
  ['Scheduled', 'Processes placed'],
  ['Healthy', 'Services answering'],
  ['Routed', 'Addresses live'],
];
const phaseLabels = {
  Pending: 'Queued for admission',
  Waiting: 'Waiting for room',
  Starting: 'Starting',
  Ready: 'Ready',
  Terminating: 'Ending',
  Failed: 'Failed',
};
const endings = {
  Deleted: 'You ended the session.',
  IdleTimeout: 'The session was ended because it was idle.',
  MaxLifetime: 'The session reached its maximum lifetime.',
  FailedRetentionEnded: 'The failed session was cleaned up.',
};

/** The idle timeouts offered, in seconds, where the operator lets users choose: those within the limits are shown. */
const idleTimeoutChoices = [15 * 60, 30 * 60, 60 * 60, 2 * 60 * 60, 4 * 60 * 60, 8 * 60 * 60];

const $ = (id) => document.getElementById(id);

/** What the page shows; one session at a time. */
const state = {
  templates: [],
  /** What the user's creates are held to (GET /limits); undefined when the front end does not say. */
  limits: undefined,
  /** The session shown, as last heard from the server. */
  session: undefined,
  /** Stops following the session shown (its event stream or its polling). */
  unfollow: () => {},
  /** The once-a-second clock of countdowns and estimates, while a session is shown. */
  clock: undefined,
  /** The endpoints drawn, as JSON: they are drawn again only when they change (a copy button keeps its focus). */
  drawnEndpoints: undefined,
  /** The session shown is not followed because the tab is hidden (followOnlyWhileVisible). */
  pausedWhileHidden: false,
  /**
   * The server's clock minus this browser's, from the Date header of the API's answers: deadlines and
   * estimates are the server's times, and a browser's clock may be minutes off.
   */
  clockOffsetMs: 0,
};

// ---------------------------------------------------------------------------------------------------
// The REST API

/** An answer other than 2xx: the API's `{ error, details }`, with the rest of the body (e.g. `existing`). */
class ApiError extends Error {
  constructor(status, body) {
    super(typeof body.error === 'string' ? body.error : `the server answered ${status}`);
    this.status = status;
    this.details = Array.isArray(body.details) ? body.details : [];
    this.body = body;
  }
}

async function request(method, path, body) {
  let response;
  try {
    response = await fetch(`${api}${path}`, {
      method,
      credentials: 'same-origin',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { error: 'Manticore cannot be reached. Check your connection and try again.' });
  }
  noteServerClock(response);
  // A proxy in front may answer with a page of its own; only JSON is the API speaking.
  const json = (response.headers.get('content-type') ?? '').includes('application/json');
  const parsed = json ? await response.json().catch(() => ({})) : {};
  if (!response.ok) {
    throw new ApiError(response.status, json ? parsed : { error: `the server answered ${response.status} ${response.statusText}`.trim() });
  }
  return parsed;
}

const sessionPath = (id) => `/sessions/${encodeURIComponent(id)}`;

function noteServerClock(response) {
  const date = Date.parse(response.headers.get('date') ?? '');
  if (Number.isNaN(date)) return;
  // The header counts whole seconds (hence the half second): an offset within two seconds is no offset.
  const offset = date + 500 - Date.now();
  state.clockOffsetMs = Math.abs(offset) < 2000 ? 0 : offset;
}

/** When a time the server gave (ISO 8601) comes on this browser's clock. */
const localTime = (iso) => Date.parse(iso) - state.clockOffsetMs;

// ---------------------------------------------------------------------------------------------------
// Messages

function showError(error) {
  const message = error instanceof ApiError ? error.message : String(error);
  const details = error.details ?? [];
  const shown = [...$('error-details').children].map((item) => item.textContent);
  // An alert is read out whenever its text is written: the same error again (each read of the session while
  // the front end is down) is left as it is.
  const same = !$('error').hidden && $('error-message').textContent === message && shown.length === details.length && shown.every((detail, i) => detail === details[i]);
  if (same) return;
  $('error-message').textContent = message;
  $('error-details').replaceChildren(...details.map((detail) => Object.assign(document.createElement('li'), { textContent: detail })));
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('retry').hidden = true;
}

function showNotice(text) {
  writeLive($('notice'), text);
  $('notice').hidden = text === '';
}

/**
 * Writes the text of a live region, or of a part of one, only when it changes: screen readers read it out
 * whenever it is written, the same words too (a status repeated at every try to reconnect).
 */
function writeLive(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** Says something to screen readers without showing it. */
function announce(text) {
  $('announce').textContent = text;
}

/** Shows one of the page's sections (start, session, ended), hiding the others. */
function showSection(id) {
  $('loading').hidden = true;
  for (const section of ['start', 'session', 'ended']) $(section).hidden = section !== id;
}

/**
 * Marks a button as working on what was asked, or as done: aria-disabled, not disabled, as a disabled button
 * loses the focus to the page's body. Its handler ignores presses while it is busy.
 */
function setBusy(button, busy) {
  if (busy) button.setAttribute('aria-disabled', 'true');
  else button.removeAttribute('aria-disabled');
}

const isBusy = (button) => button.getAttribute('aria-disabled') === 'true';

/**
 * Moves the focus to the heading of the section shown in place of the one that had it (a hidden button
 * leaves the focus nowhere), so keyboard users go on from there and screen readers say where they are.
 */
function focusSection(id) {
  $(`${id}-title`).focus();
}

function clone(templateId) {
  return $(templateId).content.firstElementChild.cloneNode(true);
}

// ---------------------------------------------------------------------------------------------------
// Starting a session

function showForm() {
  stopShowingSession();
  showSection('start');
  const available = state.templates.filter((template) => template.available);
  $('no-templates').hidden = available.length > 0;
  $('start-form').hidden = available.length === 0;
  const select = $('template');
  if (select.options.length === 0) {
    select.replaceChildren(...available.map((template) => new Option(template.name, template.name)));
    renderParameters();
    renderIdleTimeouts();
  }
}

function selectedTemplate() {
  return state.templates.find((template) => template.name === $('template').value);
}

/** One select per parameter of the chosen template, its default preselected. */
function renderParameters() {
  const template = selectedTemplate();
  $('template-description').textContent = template?.description ?? '';
  $('parameters').replaceChildren(
    ...(template?.parameters ?? []).map((parameter) => {
      const field = clone('parameter-field');
      const id = `parameter-${parameter.name}`;
      const select = field.querySelector('select');
      Object.assign(select, { id, name: parameter.name });
      select.replaceChildren(...parameter.enum.map((value) => new Option(value, value, value === parameter.default, value === parameter.default)));
      Object.assign(field.querySelector('label'), { htmlFor: id, textContent: parameter.name });
      const hint = field.querySelector('.hint');
      hint.id = `${id}-description`;
      hint.textContent = parameter.description;
      select.setAttribute('aria-describedby', hint.id);
      return field;
    }),
  );
}

/** The idle timeout choice, with its default chosen; hidden when there is nothing to choose. */
function renderIdleTimeouts() {
  const offered = idleTimeoutsOffered(state.limits?.idle);
  $('idle-field').hidden = offered.length < 2;
  if (offered.length < 2) return;
  const { defaultTimeoutSeconds, warningSeconds } = state.limits.idle;
  $('idle-timeout').replaceChildren(
    ...offered.map((seconds) => {
      const label = seconds === 0 ? 'Never' : describeDuration(seconds);
      const isDefault = seconds === defaultTimeoutSeconds;
      // The default asks for nothing: the session then follows the operator's default.
      return new Option(isDefault ? `${label} (default)` : label, isDefault ? '' : String(seconds), isDefault, isDefault);
    }),
  );
  $('idle-timeout-description').textContent = `Without activity for this long, the session ends. You are warned ${describeDuration(warningSeconds)} before.`;
}

/**
 * The idle timeouts offered, shortest first and never last: none unless the operator lets users pick something
 * other than the default (a maximum above it, or none); else the sensible durations within the limits (above
 * the warning, at most the maximum), the maximum itself, the default, and never where there is no maximum.
 */
function idleTimeoutsOffered(idle) {
  if (idle === undefined) return [];
  const { defaultTimeoutSeconds: byDefault, maxTimeoutSeconds: max, warningSeconds: warning } = idle;
  if (max !== 0 && max === byDefault) return [];
  const allowed = (seconds) => (seconds === 0 ? max === 0 : seconds > warning && (max === 0 || seconds <= max));
  const offered = [...new Set([...idleTimeoutChoices, max, byDefault])].filter(allowed);
  return offered.sort((a, b) => (a === 0 ? Infinity : a) - (b === 0 ? Infinity : b));
}

/** A whole number of seconds in words: "1 hour", "15 minutes", "24 seconds". */
function describeDuration(seconds) {
  const [amount, unit] = seconds % 3600 === 0 ? [seconds / 3600, 'hour'] : seconds % 60 === 0 ? [seconds / 60, 'minute'] : [seconds, 'second'];
  return `${amount} ${unit}${amount === 1 ? '' : 's'}`;
}

async function startSession(event) {
  event.preventDefault();
  const button = $('start-button');
  if (isBusy(button)) return;
  setBusy(button, true);
  clearError();
  showNotice('');
  const parameters = Object.fromEntries([...$('parameters').querySelectorAll('select')].map((select) => [select.name, select.value]));
  // Only a timeout other than the default is asked for.
  const idleTimeout = $('idle-field').hidden ? '' : $('idle-timeout').value;
  const idle = idleTimeout === '' ? {} : { idle: { timeoutSeconds: Number(idleTimeout) } };
  try {
    showSession(await request('POST', '/sessions', { template: $('template').value, parameters, ...idle }));
    focusSection('session');
  } catch (error) {
    // One session per user: the one in the way is shown instead of a dead end.
    const existing = error instanceof ApiError && error.status === 409 ? error.body.existing?.[0] : undefined;
    if (existing === undefined) showError(error);
    else await showExisting(existing);
  } finally {
    setBusy(button, false);
  }
}

async function showExisting(id) {
  try {
    const session = await request('GET', sessionPath(id));
    showNotice('You already have a session; here it is.');
    showSession(session);
    focusSection('session');
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------------------------------------------
// Following a session

function showSession(session) {
  stopShowingSession();
  showSection('session');
  setBusy($('end'), false);
  render(session);
  state.clock = setInterval(renderClock, 1000);
  state.unfollow = follow(session.metadata.id);
  // A tab opened in the background waits until it is shown.
  followOnlyWhileVisible();
}

function stopShowingSession() {
  stopLogs();
  state.unfollow();
  state.unfollow = () => {};
  clearInterval(state.clock);
  state.clock = undefined;
  state.drawnEndpoints = undefined;
  state.pausedWhileHidden = false;
}

/**
 * A hidden tab follows nothing: over HTTP/1.1 a browser opens at most six connections to a host, and a tab
 * following a session holds two (its status and its log), so a few tabs left in the background would stall
 * every other request to Manticore. Shown again, the tab follows the session afresh and the log from where
 * it stopped. (The status stream is no activity, so a hidden tab changes nothing about the idle clock.)
 */
function followOnlyWhileVisible() {
  if (state.clock === undefined) return;
  if (document.hidden && !state.pausedWhileHidden) {
    state.pausedWhileHidden = true;
    state.unfollow();
    state.unfollow = () => {};
    closeLogStream();
  } else if (!document.hidden && state.pausedWhileHidden) {
    state.pausedWhileHidden = false;
    state.unfollow = follow(state.session.metadata.id);
    if (logs.following && logs.sessionId !== undefined) openLogStream();
  }
}

/**
 * About `ms`: drawn between half of it and half again, so that the pages whose streams broke together (a
 * front end restarting) come back spread out, not all in the same instant.
 */
function jittered(ms) {
  return ms * (0.5 + Math.random());
}

/**
 * Follows the session on its server-sent-event stream. Should the stream fail, the session is read every
 * couple of seconds instead: for good where no stream ever delivered (a proxy that breaks or holds back
 * server-sent events), else (a network drop, the front end restarting) until a read succeeds, after which the
 * stream is opened again. A stream that broke is followed by a read within a poll's time, and reads that
 * fail are tried again ever less often (2 s doubling to 10 s), each wait drawn at random around its length,
 * so that every page does not come back at once to a front end that has just restarted. A stream refused
 * because the user has too many open (429) is said to be paused, and is tried again now and then while the
 * session is read. Returns how to stop.
 */
function follow(id) {
  let stopped = false;
  /** The next poll, or the wait for the stream's first event. */
  let timer;
  let source;
  let streamed = false;
  /** Reading the session instead of following the stream: a poll that answers after a stream was opened again is dropped. */
  let polling = false;
  /** Reads that failed in a row. */
  let failures = 0;
  let retryRefused;
  const poll = async () => {
    try {
      const session = await request('GET', sessionPath(id));
      if (stopped || !polling) return;
      failures = 0;
      clearError();
      render(session);
      // Reachable again: streams worked here before, so back to one (no sooner than a poll, should it break at once again).
      if (streamed) {
        timer = setTimeout(listen, jittered(pollIntervalMs));
        return;
      }
      timer = setTimeout(poll, pollIntervalMs);
    } catch (error) {
      if (stopped || !polling) return;
      if (error.status === 404) {
        ended();
        return;
      }
      showError(error);
      timer = setTimeout(poll, jittered(Math.min(pollIntervalMs * 2 ** failures++, maxRetryMs)));
    }
  };
  /** Stops asking why the stream was refused. */
  let stopAsking = () => {};
  /**
   * An EventSource does not say why the server refused it: the same request, made again, tells. Only the
   * per-user stream limit (429: too many pages open) is the user's to know about; anything else the polling
   * reports as it reads the session.
   */
  const explainRefusal = async () => {
    const asking = new AbortController();
    stopAsking = () => asking.abort();
    try {
      const response = await fetch(`${api}${sessionPath(id)}/events`, { credentials: 'same-origin', headers: { accept: 'text/event-stream' }, signal: asking.signal });
      if (!stopped && response.status === 429) {
        showLiveUpdates(
          `Live updates paused: too many open pages for this user; refreshing every ${pollIntervalMs / 1000} s and trying again every ${refusedStreamRetryMs / 1000} s.`,
        );
        clearTimeout(retryRefused);
        retryRefused = setTimeout(() => {
          if (stopped || !polling) return;
          clearTimeout(timer);
          listen();
        }, refusedStreamRetryMs);
      }
    } catch {
      // Unreachable, or stopped: nothing to tell beyond what the polling shows.
    } finally {
      // A stream this opened (the limit freed up meanwhile) is not kept.
      asking.abort();
    }
  };
  const fallBack = () => {
    // CLOSED: the server answered with an error (the browser does not reconnect), not a broken connection.
    if (source.readyState === EventSource.CLOSED) explainRefusal();
    source.close();
    clearTimeout(timer);
    if (stopped || polling) return;
    polling = true;
    // A stream that delivered broke (the front end went away): every page it served saw it break at once.
    if (streamed) timer = setTimeout(poll, Math.random() * pollIntervalMs);
    else poll();
  };
  const listen = () => {
    polling = false;
    source = new EventSource(`${api}${sessionPath(id)}/events`);
    timer = setTimeout(fallBack, firstEventTimeoutMs);
    source.addEventListener('session', (event) => {
      clearTimeout(timer);
      streamed = true;
      showLiveUpdates('');
      render(JSON.parse(event.data));
    });
    source.addEventListener('gone', ended);
    // Also fired when the stream breaks or the server ends it (it is shutting down).
    source.addEventListener('error', fallBack);
  };
  listen();
  return () => {
    stopped = true;
    stopAsking();
    source.close();
    clearTimeout(timer);
    clearTimeout(retryRefused);
    showLiveUpdates('');
  };
}

/** Says (politely, to screen readers too) why the session shown is not followed live; '' when it is. */
function showLiveUpdates(text) {
  writeLive($('live-updates'), text);
}

function isTerminating(session) {
  return session.metadata.deletionRequestedAt !== undefined || session.status.phase === 'Terminating';
}

function condition(session, type) {
  return session.status.conditions.find((candidate) => candidate.type === type);
}

/** Brings the session section up to date with what the server says. */
function render(session) {
  // What has the focus may go with this state (the idle warning once answered, End session once ending).
  const hadFocus = $('session').contains(document.activeElement) ? document.activeElement : undefined;
  state.session = session;
  const { phase } = session.status;
  const terminating = isTerminating(session);
  const ready = condition(session, 'Ready');

  $('session-template').textContent = session.spec.template;
  $('session-id').textContent = session.metadata.id;
  // A failed session ends at the end of its retention, not by idleness.
  const idleTimeout = terminating || phase === 'Failed' ? undefined : idleTimeoutOf(session);
  $('idle-policy').hidden = idleTimeout === undefined;
  if (idleTimeout !== undefined) $('idle-policy').textContent = idleTimeout === 0 ? 'Does not end for inactivity.' : `Ends after ${describeDuration(idleTimeout)} without activity.`;
  writeLive($('phase'), terminating ? 'Ending the session…' : phaseLabels[phase] ?? phase);
  $('phase').dataset.phase = terminating ? 'Terminating' : phase;
  const position = phase === 'Waiting' && !terminating && session.status.queuePosition !== undefined ? `You are number ${session.status.queuePosition} in the queue.` : '';
  writeLive($('queue-position'), position);

  $('progress').hidden = terminating || phase === 'Ready' || phase === 'Failed';
  $('checklist').replaceChildren(
    ...steps.map(([type, label]) => {
      const item = clone('checklist-item');
      const done = condition(session, type)?.status === 'True';
      item.classList.toggle('done', done);
      item.querySelector('.label').textContent = label;
      item.querySelector('.state').textContent = done ? '(done)' : '(not yet)';
      return item;
    }),
  );
  $('ready-message').textContent = ready?.message ?? '';

  $('failure').hidden = phase !== 'Failed';
  $('failure-reason').textContent = ready?.reason ?? 'Failed';
  $('failure-message').textContent = ready?.message ?? '';

  // The addresses are being taken down while the session ends.
  const endpoints = terminating ? {} : session.status.endpoints;
  if (state.drawnEndpoints !== JSON.stringify(endpoints)) {
    state.drawnEndpoints = JSON.stringify(endpoints);
    renderEndpoints(session.spec.template, endpoints);
  }

  const warning = condition(session, 'IdleWarning');
  const warned = !terminating && warning?.status === 'True';
  $('idle-warning').hidden = !warned;
  if (warned) {
    $('idle-message').textContent = warning.reason === 'Idle' ? 'This session has been idle and will end in' : 'This session reaches its maximum lifetime in';
    // Activity cannot postpone the lifetime cap, so there is nothing to press then.
    $('keepalive').hidden = warning.reason !== 'Idle';
  } else {
    setBusy($('keepalive'), false);
  }

  $('end').hidden = terminating;
  $('replace').hidden = phase !== 'Failed' || terminating;
  renderLogs(session);
  renderClock();
  // Else it would be left on the page's body, and a screen reader would say nothing of where the user is.
  if (hadFocus !== undefined && !$('session').hidden && (!hadFocus.isConnected || hadFocus.getClientRects().length === 0)) focusSection('session');
}

/**
 * The idle timeout the session runs under, as the controller applies it (sessionExpiryPolicy): its own, held to
 * the operator's maximum (a session asking never gets the maximum while there is one), else the operator's
 * default; undefined when the front end does not say its limits.
 */
function idleTimeoutOf(session) {
  const idle = state.limits?.idle;
  if (idle === undefined) return undefined;
  const asked = session.spec.idle?.timeoutSeconds;
  if (asked === undefined) return idle.defaultTimeoutSeconds;
  if (idle.maxTimeoutSeconds === 0) return asked;
  return asked === 0 ? idle.maxTimeoutSeconds : Math.min(asked, idle.maxTimeoutSeconds);
}

/** The parts that move with the clock: the idle countdown and the estimated start. */
function renderClock() {
  const { status } = state.session;
  if (status.expiresAt !== undefined) {
    const left = Math.max(0, Math.ceil((localTime(status.expiresAt) - Date.now()) / 1000));
    $('countdown').textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`;
  }
  const waiting = status.phase === 'Waiting' && !isTerminating(state.session);
  const estimate = waiting ? status.estimatedStartAt : undefined;
  $('estimated-start').hidden = !waiting;
  $('estimated-start').textContent = estimate === undefined ? 'No start time can be estimated yet.' : `Estimated start: ${describeTime(localTime(estimate))} (an estimate, not a promise).`;
}

function describeTime(at) {
  const time = new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const minutes = Math.ceil((at - Date.now()) / 60_000);
  if (minutes <= 0) return 'any moment now';
  return minutes === 1 ? `${time}, in about a minute` : `${time}, in about ${minutes} minutes`;
}

// ---------------------------------------------------------------------------------------------------
// Addresses

function renderEndpoints(templateName, endpoints) {
  const entries = Object.entries(endpoints);
  $('endpoints').hidden = entries.length === 0;
  const descriptions = new Map((state.templates.find((template) => template.name === templateName)?.services ?? []).map((service) => [service.name, service.description]));

  const hmi = endpoints.hmi;
  $('hmi-link').hidden = hmi === undefined;
  if (hmi !== undefined) $('hmi-link').href = hmi.url;

  $('tcp-endpoints').replaceChildren(
    ...entries
      .filter(([, endpoint]) => endpoint.protocol === 'tcp')
      .map(([name, endpoint]) => {
        // tcp://host:port or tls://host:port; parsed by hand as URL's handling of non-special schemes varies between browsers.
        const [, host, port] = /^(?:tcp|tls):\/\/(.+):(\d+)$/.exec(endpoint.url) ?? [undefined, endpoint.url, ''];
        const figure = clone('tcp-endpoint');
        figure.querySelector('figcaption').textContent = `For the SDL app: ${name}, over ${endpoint.tls ? 'TLS (through a local TLS client)' : 'TCP'}`;
        figure.querySelector('.host').textContent = host;
        figure.querySelector('.port').textContent = port;
        const matrix = qrMatrix(`${host}:${port}`);
        if (matrix !== undefined) figure.querySelector('.qr').append(qrSvg(matrix, `QR code of ${host}:${port}`));
        return figure;
      }),
  );

  $('endpoint-list').replaceChildren(
    ...entries.map(([name, endpoint]) => {
      const item = clone('endpoint-item');
      item.querySelector('.service').textContent = name;
      item.querySelector('.protocol').textContent = endpoint.protocol;
      item.querySelector('.description').textContent = descriptions.get(name) ?? '';
      const input = item.querySelector('input');
      input.value = endpoint.url;
      input.setAttribute('aria-label', `${name} address`);
      const copyButton = item.querySelector('.copy');
      markCopied(copyButton, name, false);
      copyButton.addEventListener('click', () => copy(input, copyButton, name));
      if (endpoint.protocol === 'http') {
        const open = item.querySelector('.open');
        open.href = endpoint.url;
        open.hidden = false;
        open.setAttribute('aria-label', `Open ${name} in a new tab`);
      }
      return item;
    }),
  );
}

/** Says on a copy button, in its text and its name alike, whether its address is the one copied. */
function markCopied(button, name, copied) {
  button.dataset.service = name;
  button.textContent = copied ? 'Copied' : 'Copy';
  button.setAttribute('aria-label', `${copied ? 'Copied' : 'Copy'} the ${name} address`);
}

/** Copies an address: the Clipboard API where the page may use it (a secure context), else the old way. */
async function copy(input, button, name) {
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch {
    input.focus();
    input.select();
    copied = document.execCommand('copy');
  }
  if (copied) {
    // Only the address copied last is in the clipboard.
    for (const each of $('endpoint-list').querySelectorAll('.copy')) markCopied(each, each.dataset.service, each === button);
    announce(`Copied the ${name} address.`);
  } else {
    showNotice(`This browser did not let the page copy; the ${name} address is selected: copy it from the keyboard or the menu.`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Keeping alive and ending

async function keepAlive() {
  const button = $('keepalive');
  if (isBusy(button)) return;
  setBusy(button, true);
  try {
    await request('POST', `${sessionPath(state.session.metadata.id)}/keepalive`);
    clearError();
    // The warning goes once the controller has seen the activity and the new status arrives.
    announce('Thanks; the session stays.');
  } catch (error) {
    setBusy(button, false);
    showError(error);
  }
}

async function endSession() {
  const button = $('end');
  if (isBusy(button)) return;
  setBusy(button, true);
  clearError();
  try {
    const session = await request('DELETE', sessionPath(state.session.metadata.id));
    // Unless the stream has already said it is gone.
    if (!$('session').hidden) render(session);
  } catch (error) {
    setBusy(button, false);
    if (error.status === 404) ended();
    else showError(error);
  }
}

/** The session is gone (ended by the user, the idle clock, the lifetime cap or the failure retention). */
function ended() {
  const reason = state.session?.metadata.deletionReason;
  stopShowingSession();
  showNotice('');
  showSection('ended');
  $('ended-reason').textContent = endings[reason] ?? 'The session has ended.';
  focusSection('ended');
}

// ---------------------------------------------------------------------------------------------------
// Task logs: a tab per task of the session, its stdout or stderr followed live (server-sent events) or
// paused, searched within what the page holds, and downloaded as it is.

/** Lines a log starts with. */
const logTailLines = 500;
/** Characters of a log the page keeps; older output is dropped from the page (not from the server). */
const logKeptChars = 1_000_000;
/** Matches highlighted at most, so searching a big log stays quick. */
const logMaxMarks = 5_000;
/** How soon a log that is not there yet (a task not started) is asked for again. */
const logRetryMs = 3_000;

const logs = {
  sessionId: undefined,
  /** The session's current workload: its log is the one shown. */
  allocationId: undefined,
  tasks: [],
  task: undefined,
  stream: 'stdout',
  following: true,
  /** `task/stream` → what the page holds of that log: { text, end, allocationId, dropped }. */
  views: new Map(),
  source: undefined,
  retry: undefined,
  drawPending: false,
};

function logView() {
  const key = `${logs.task}/${logs.stream}`;
  if (!logs.views.has(key)) logs.views.set(key, { text: '', end: undefined, allocationId: undefined, dropped: false });
  return logs.views.get(key);
}

/** Shows the logs once the session's workload is placed; called with every new state of the session. */
function renderLogs(session) {
  const tasks = state.templates.find((template) => template.name === session.spec.template)?.tasks ?? [];
  const allocationId = session.status.allocationId;
  const shown = allocationId !== undefined && tasks.length > 0 && !isTerminating(session);
  $('logs').hidden = !shown;
  if (!shown) {
    closeLogStream();
    return;
  }
  if (logs.sessionId !== session.metadata.id) {
    stopLogs();
    Object.assign(logs, { sessionId: session.metadata.id, tasks, task: tasks[0], stream: 'stdout', following: true });
    $('log-stream').value = 'stdout';
    drawLogTabs();
    drawFollowButton();
  }
  if (logs.allocationId !== allocationId) {
    logs.allocationId = allocationId;
    if (logs.following) openLogStream();
  }
}

function stopLogs() {
  closeLogStream();
  logs.views.clear();
  logs.sessionId = undefined;
  logs.allocationId = undefined;
}

function drawLogTabs() {
  $('log-tasks').replaceChildren(
    ...logs.tasks.map((task) => {
      const tab = document.createElement('button');
      Object.assign(tab, { type: 'button', id: `log-tab-${task}`, textContent: task });
      tab.setAttribute('role', 'tab');
      tab.setAttribute('aria-controls', 'log-panel');
      tab.setAttribute('aria-selected', String(task === logs.task));
      // One tab stop for the whole list (the selected tab); the arrow keys move between tabs.
      tab.tabIndex = task === logs.task ? 0 : -1;
      tab.addEventListener('click', () => selectLog(task, logs.stream));
      tab.addEventListener('keydown', (event) => moveBetweenTabs(event, task));
      return tab;
    }),
  );
  $('log-panel').setAttribute('aria-labelledby', `log-tab-${logs.task}`);
}

/** The keys of the WAI-ARIA tabs pattern: ←/→ (wrapping), Home and End select a tab and focus it. */
function moveBetweenTabs(event, task) {
  const { tasks } = logs;
  const at = tasks.indexOf(task);
  const target = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: tasks.length - 1 }[event.key];
  if (target === undefined) return;
  event.preventDefault();
  const next = tasks[(target + tasks.length) % tasks.length];
  if (next !== logs.task) selectLog(next, logs.stream);
  $(`log-tab-${next}`).focus();
}

function drawFollowButton() {
  $('log-follow').textContent = logs.following ? 'Pause' : 'Follow';
  $('log-follow').setAttribute('aria-pressed', String(logs.following));
}

function selectLog(task, stream) {
  closeLogStream();
  Object.assign(logs, { task, stream });
  drawLogTabs();
  if (logs.following) openLogStream();
  else setLogStatus(`Paused. Press Follow to read ${task}'s ${stream} on from here.`);
  drawLog();
}

function toggleFollow() {
  logs.following = !logs.following;
  drawFollowButton();
  if (logs.following) openLogStream();
  else {
    closeLogStream();
    setLogStatus('Paused: new output is not shown. Press Follow to catch up from where it stopped.');
  }
}

function setLogStatus(text) {
  const view = logView();
  writeLive($('log-status'), view.dropped ? `${text} The page keeps the last ${logKeptChars.toLocaleString()} characters.` : text);
}

function closeLogStream() {
  logs.source?.close();
  logs.source = undefined;
  clearTimeout(logs.retry);
}

/**
 * Follows the selected log: from where the page stopped reading it (same workload), else its last lines.
 * EventSource reconnects by itself, resuming after the last event (its id), including after the server
 * closed the stream because the workload was replaced (the new one's log is then read from its start) or
 * the session failed (the rest of the log is then read, and the stream ends).
 */
function openLogStream() {
  closeLogStream();
  const view = logView();
  const query = new URLSearchParams({ task: logs.task, stream: logs.stream, follow: 'true' });
  if (view.end !== undefined && view.allocationId === logs.allocationId) query.set('offset', String(view.end));
  else query.set('tail', String(logTailLines));
  const source = new EventSource(`${api}${sessionPath(logs.sessionId)}/logs?${query}`);
  logs.source = source;
  $('log-follow').hidden = false;
  const { task, stream } = logs;
  setLogStatus(`Connecting to ${task}'s ${stream}…`);
  source.addEventListener('start', (event) => {
    const { allocationId } = JSON.parse(event.data);
    if (view.allocationId !== allocationId) {
      // Another workload than the one the page read: its log starts anew.
      Object.assign(view, { text: '', end: undefined, allocationId, dropped: false });
      drawLog();
    }
    setLogStatus(`Following ${task}'s ${stream} live.`);
  });
  source.addEventListener('log', (event) => {
    const { text, end } = JSON.parse(event.data);
    appendLog(view, text);
    view.end = end;
  });
  source.addEventListener('gap', () => appendLog(view, '--- some output was rotated away before it could be shown ---\n'));
  source.addEventListener('closing', (event) => setLogStatus(`${JSON.parse(event.data).reason}; reconnecting…`));
  // A failed session's workload is stopped: all of its log is shown, and there is nothing more to wait for.
  source.addEventListener('ended', () => {
    closeLogStream();
    // Nothing more comes to pause; another task or stream of it shows the button again, until it ends too.
    $('log-follow').hidden = true;
    setLogStatus(`This is all of ${task}'s ${stream}: the session failed and its workload has stopped.`);
  });
  source.addEventListener('gone', closeLogStream);
  source.addEventListener('error', () => {
    if (logs.source !== source) return;
    if (source.readyState !== EventSource.CLOSED) {
      setLogStatus('The log stream broke; reconnecting…');
      return;
    }
    // Refused (EventSource does not say why): ask once more without following, to show the reason.
    explainLogFailure(task, stream);
  });
}

async function explainLogFailure(task, stream) {
  closeLogStream();
  const query = new URLSearchParams({ task, stream, tail: '0' });
  let message = 'The log cannot be read right now.';
  try {
    const response = await fetch(`${api}${sessionPath(logs.sessionId)}/logs?${query}`, { credentials: 'same-origin' });
    const body = (response.headers.get('content-type') ?? '').includes('application/json') ? await response.json() : {};
    if (typeof body.error === 'string') message = body.error;
  } catch {
    message = 'Manticore cannot be reached; trying again.';
  }
  if (logs.task !== task || logs.stream !== stream || !logs.following) return;
  // The API's messages end without a full stop.
  setLogStatus(`${/[.!?]$/.test(message) ? message : `${message}.`} Trying again in a moment.`);
  logs.retry = setTimeout(() => {
    if (logs.following && logs.sessionId !== undefined) openLogStream();
  }, logRetryMs);
}

function appendLog(view, text) {
  const kept = keepLogTail(view.text + text, logKeptChars);
  view.text = kept.text;
  view.dropped ||= kept.dropped;
  if (view === logView() && !logs.drawPending) {
    logs.drawPending = true;
    requestAnimationFrame(() => {
      logs.drawPending = false;
      drawLog();
    });
  }
}

/**
 * At most `max` characters of the end of a log: whole lines are dropped from the front, or, when the kept
 * part holds no line end (a task writing without newlines), the characters before it.
 */
export function keepLogTail(text, max) {
  if (text.length <= max) return { text, dropped: false };
  const cut = text.indexOf('\n', text.length - max);
  return { text: text.slice(cut === -1 ? text.length - max : cut + 1), dropped: true };
}

/** The selected log, with the search's matches marked (and only their lines, when asked). */
function drawLog() {
  const pre = $('log-text');
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 32;
  const { text } = logView();
  const term = $('log-search').value;
  if (term === '') {
    pre.textContent = text;
    $('log-matches').textContent = '';
  } else {
    const pattern = new RegExp(term.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'gi');
    const shown = $('log-filter').checked ? text.split('\n').filter((line) => line.search(pattern) >= 0).join('\n') : text;
    const nodes = [];
    let from = 0;
    let marks = 0;
    for (const match of shown.matchAll(pattern)) {
      if (marks === logMaxMarks) break;
      nodes.push(document.createTextNode(shown.slice(from, match.index)));
      nodes.push(Object.assign(document.createElement('mark'), { textContent: match[0] }));
      from = match.index + match[0].length;
      marks++;
    }
    nodes.push(document.createTextNode(shown.slice(from)));
    pre.replaceChildren(...nodes);
    $('log-matches').textContent = marks === 0 ? 'No match.' : marks === logMaxMarks ? `The first ${marks} matches are marked.` : `${marks} ${marks === 1 ? 'match' : 'matches'}.`;
  }
  if (atBottom && logs.following) pre.scrollTop = pre.scrollHeight;
}

/** What the page holds of the selected log, as a file. */
function downloadLog() {
  const url = URL.createObjectURL(new Blob([logView().text], { type: 'text/plain;charset=utf-8' }));
  const link = Object.assign(document.createElement('a'), { href: url, download: `${logs.sessionId}-${logs.task}-${logs.stream}.log` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---------------------------------------------------------------------------------------------------
// QR code (ISO/IEC 18004), just what host:port needs: byte mode, error correction level M, versions 1–6
// (up to 106 bytes), so no version information blocks. Written here rather than pulled in as a library:
// it is about 200 lines, and the page stays one file with no dependencies.

/** Per version at level M: [data codewords per block, blocks, error correction codewords per block]. */
const qrBlocks = [undefined, [16, 1, 10], [28, 1, 16], [44, 1, 26], [32, 2, 18], [43, 2, 24], [27, 4, 16]];

// Arithmetic in GF(256) modulo x^8 + x^4 + x^3 + x^2 + 1, by exponent and logarithm tables.
const gfExp = new Uint8Array(512);
const gfLog = new Uint8Array(256);
for (let i = 0, x = 1; i < 255; i++, x = (x << 1) ^ (x & 0x80 ? 0x11d : 0)) {
  gfExp[i] = gfExp[i + 255] = x;
  gfLog[x] = i;
}
const gfMultiply = (a, b) => (a === 0 || b === 0 ? 0 : gfExp[gfLog[a] + gfLog[b]]);

/** The Reed–Solomon error correction codewords of `data`: the remainder of data·x^n divided by the generator (α^0..α^(n-1) as roots). */
function reedSolomon(data, n) {
  let generator = [1];
  for (let i = 0; i < n; i++) {
    generator = [...generator, 0].map((coefficient, j) => coefficient ^ (j > 0 ? gfMultiply(generator[j - 1], gfExp[i]) : 0));
  }
  const remainder = new Array(n).fill(0);
  for (const byte of data) {
    const factor = byte ^ remainder.shift();
    remainder.push(0);
    for (let j = 0; j < n; j++) remainder[j] ^= gfMultiply(generator[j + 1], factor);
  }
  return remainder;
}

/** The codewords of `bytes` in byte mode for `version`, padded, split into blocks and interleaved with their error correction. */
function qrCodewords(bytes, version) {
  const [dataPerBlock, blockCount, eccPerBlock] = qrBlocks[version];
  const capacity = dataPerBlock * blockCount * 8;
  const bits = [];
  const push = (value, length) => {
    for (let i = length - 1; i >= 0; i--) bits.push((value >>> i) & 1);
  };
  push(0b0100, 4); // byte mode
  push(bytes.length, 8); // the count is 8 bits long up to version 9
  for (const byte of bytes) push(byte, 8);
  push(0, Math.min(4, capacity - bits.length)); // terminator
  push(0, (8 - (bits.length % 8)) % 8);
  const data = [];
  for (let i = 0; i < bits.length; i += 8) data.push(parseInt(bits.slice(i, i + 8).join(''), 2));
  for (let pad = 0xec; data.length < capacity / 8; pad ^= 0xec ^ 0x11) data.push(pad);

  const blocks = Array.from({ length: blockCount }, (_, i) => data.slice(i * dataPerBlock, (i + 1) * dataPerBlock));
  const corrections = blocks.map((block) => reedSolomon(block, eccPerBlock));
  const interleave = (parts, length) => Array.from({ length: length * blockCount }, (_, i) => parts[i % blockCount][Math.floor(i / blockCount)]);
  return [...interleave(blocks, dataPerBlock), ...interleave(corrections, eccPerBlock)];
}

/** The 15 format bits for level M and `mask`: 5 data bits, 10 BCH bits (generator 0x537), XOR 0x5412. */
function formatBits(mask) {
  const data = mask; // level M is 00, so the data bits are the mask's
  let remainder = data;
  for (let i = 0; i < 10; i++) remainder = (remainder << 1) ^ ((remainder >>> 9) * 0x537);
  return ((data << 10) | remainder) ^ 0x5412;
}

const masks = [
  (row, col) => (row + col) % 2 === 0,
  (row) => row % 2 === 0,
  (row, col) => col % 3 === 0,
  (row, col) => (row + col) % 3 === 0,
  (row, col) => (Math.floor(row / 2) + Math.floor(col / 3)) % 2 === 0,
  (row, col) => ((row * col) % 2) + ((row * col) % 3) === 0,
  (row, col) => (((row * col) % 2) + ((row * col) % 3)) % 2 === 0,
  (row, col) => (((row + col) % 2) + ((row * col) % 3)) % 2 === 0,
];

/** A symbol with its function patterns drawn and their modules reserved, data left out. */
function qrBase(version) {
  const size = 17 + 4 * version;
  const dark = Array.from({ length: size }, () => new Array(size).fill(false));
  const reserved = Array.from({ length: size }, () => new Array(size).fill(false));
  const set = (row, col, value) => {
    dark[row][col] = value;
    reserved[row][col] = true;
  };
  // Finder patterns with their light separators, in three corners.
  for (const [top, left] of [[0, 0], [0, size - 7], [size - 7, 0]]) {
    for (let r = -1; r <= 7; r++) {
      for (let c = -1; c <= 7; c++) {
        const row = top + r;
        const col = left + c;
        if (row < 0 || row >= size || col < 0 || col >= size) continue;
        const ring = Math.max(Math.abs(r - 3), Math.abs(c - 3));
        set(row, col, ring !== 2 && ring !== 4);
      }
    }
  }
  // Timing patterns.
  for (let i = 8; i < size - 8; i++) {
    set(6, i, i % 2 === 0);
    set(i, 6, i % 2 === 0);
  }
  // Versions 2–6 have one alignment pattern, centred 7 modules from the bottom right corner.
  if (version >= 2) {
    const centre = size - 7;
    for (let r = -2; r <= 2; r++) {
      for (let c = -2; c <= 2; c++) set(centre + r, centre + c, Math.max(Math.abs(r), Math.abs(c)) !== 1);
    }
  }
  // The format information areas (written per mask) and the dark module.
  for (let i = 0; i < 9; i++) {
    reserved[8][i] = reserved[i][8] = true;
    if (i < 8) reserved[8][size - 1 - i] = reserved[size - 1 - i][8] = true;
  }
  set(size - 8, 8, true);
  return { size, dark, reserved };
}

function placeFormat(symbol, mask) {
  const { size, dark } = symbol;
  const bits = formatBits(mask);
  const bit = (i) => ((bits >>> i) & 1) === 1;
  for (let i = 0; i < 15; i++) {
    // Around the top left finder: down column 8 (skipping the timing row), then left along row 8.
    if (i < 6) dark[i][8] = bit(i);
    else if (i < 8) dark[i + 1][8] = bit(i);
    else if (i === 8) dark[8][7] = bit(i);
    else dark[8][14 - i] = bit(i);
    // The copy: along row 8 from the right edge, then up column 8 from the bottom.
    if (i < 8) dark[8][size - 1 - i] = bit(i);
    else dark[size - 15 + i][8] = bit(i);
  }
}

/** The standard's penalty score of a masked symbol (runs, 2×2 blocks, finder-like patterns, dark balance); the lowest wins. */
function penalty({ size, dark }) {
  let score = 0;
  const lines = [];
  for (let i = 0; i < size; i++) {
    lines.push(dark[i], dark.map((row) => row[i]));
  }
  for (const line of lines) {
    for (let start = 0, end = 1; end <= size; end++) {
      if (end < size && line[end] === line[start]) continue;
      if (end - start >= 5) score += 3 + (end - start - 5);
      start = end;
    }
    const text = line.map(Number).join('');
    for (const pattern of ['10111010000', '00001011101']) {
      for (let at = text.indexOf(pattern); at >= 0; at = text.indexOf(pattern, at + 1)) score += 40;
    }
  }
  for (let row = 0; row < size - 1; row++) {
    for (let col = 0; col < size - 1; col++) {
      const colour = dark[row][col];
      if (dark[row][col + 1] === colour && dark[row + 1][col] === colour && dark[row + 1][col + 1] === colour) score += 3;
    }
  }
  const darkCount = dark.flat().filter(Boolean).length;
  score += Math.floor(Math.abs((darkCount * 100) / (size * size) - 50) / 5) * 10;
  return score;
}

/**
 * The QR code of `text` as rows of modules (true: dark), or undefined when it needs more than version 6.
 * Exported for the browser test, which checks it against a reference encoder.
 */
export function qrMatrix(text) {
  const bytes = new TextEncoder().encode(text);
  const version = qrBlocks.findIndex((blocks) => blocks !== undefined && bytes.length <= blocks[0] * blocks[1] - 2);
  if (version < 0) return undefined;
  const codewords = qrCodewords(bytes, version);
  const base = qrBase(version);
  // Data goes in two-module columns from the bottom right, up then down, skipping the vertical timing column.
  const positions = [];
  for (let right = base.size - 1; right > 0; right -= 2) {
    if (right === 6) right = 5;
    const upward = ((right + 1) & 2) === 0;
    for (let step = 0; step < base.size; step++) {
      const row = upward ? base.size - 1 - step : step;
      for (const col of [right, right - 1]) if (!base.reserved[row][col]) positions.push([row, col]);
    }
  }
  let best;
  for (let mask = 0; mask < masks.length; mask++) {
    const symbol = { size: base.size, dark: base.dark.map((row) => [...row]) };
    positions.forEach(([row, col], i) => {
      const bit = i < codewords.length * 8 && ((codewords[i >>> 3] >>> (7 - (i & 7))) & 1) === 1;
      symbol.dark[row][col] = bit !== masks[mask](row, col);
    });
    placeFormat(symbol, mask);
    const score = penalty(symbol);
    if (best === undefined || score < best.score) best = { score, dark: symbol.dark };
  }
  return best.dark;
}

/** The symbol as an SVG: dark modules as one path, on white with the 4-module quiet zone. */
function qrSvg(matrix, label) {
  const svgNs = 'http://www.w3.org/2000/svg';
  const size = matrix.length + 8;
  const svg = document.createElementNS(svgNs, 'svg');
  for (const [name, value] of Object.entries({ viewBox: `0 0 ${size} ${size}`, role: 'img', 'aria-label': label, 'shape-rendering': 'crispEdges' })) {
    svg.setAttribute(name, value);
  }
  const background = document.createElementNS(svgNs, 'rect');
  for (const [name, value] of Object.entries({ width: size, height: size, fill: '#fff' })) background.setAttribute(name, value);
  const modules = document.createElementNS(svgNs, 'path');
  const path = matrix.flatMap((row, y) => row.map((dark, x) => (dark ? `M${x + 4} ${y + 4}h1v1h-1z` : ''))).join('');
  modules.setAttribute('d', path);
  modules.setAttribute('fill', '#000');
  svg.append(background, modules);
  return svg;
}

// ---------------------------------------------------------------------------------------------------

async function main() {
  $('template').addEventListener('change', renderParameters);
  $('start-form').addEventListener('submit', startSession);
  $('keepalive').addEventListener('click', keepAlive);
  $('end').addEventListener('click', endSession);
  const askForNewSession = () => {
    showForm();
    focusSection('start');
  };
  $('replace').addEventListener('click', askForNewSession);
  $('new-session').addEventListener('click', askForNewSession);
  $('log-follow').addEventListener('click', toggleFollow);
  $('log-stream').addEventListener('change', () => selectLog(logs.task, $('log-stream').value));
  $('log-search').addEventListener('input', drawLog);
  $('log-filter').addEventListener('change', drawLog);
  $('log-download').addEventListener('click', downloadLog);
  document.addEventListener('visibilitychange', followOnlyWhileVisible);
  $('retry').addEventListener('click', async () => {
    // Cleared, so that the same error again is shown (and read out) anew.
    clearError();
    $('loading').hidden = false;
    // The button goes with the error it belongs to: what loads takes the focus, or it is back for another try.
    if (await load()) focusSection(state.session === undefined ? 'start' : 'session');
    else $('retry').focus();
  });
  await load();
}

/** Loads the templates, the limits and the user's sessions, and shows the form or the live session; false when it cannot, with a way to try again. */
async function load() {
  try {
    const [templates, sessions, limits] = await Promise.all([
      request('GET', '/templates'),
      request('GET', '/sessions'),
      // Behind a load balancer during an upgrade, an older front end may not know the route: the page then offers no idle timeout choice.
      request('GET', '/limits').catch(() => undefined),
    ]);
    state.templates = templates;
    state.limits = limits;
    // A live session (not being ended, not failed) is shown instead of the form; the newest if several.
    const live = sessions.items.filter((session) => !isTerminating(session) && session.status.phase !== 'Failed');
    clearError();
    if (live.length > 0) showSession(live[live.length - 1]);
    else showForm();
    return true;
  } catch (error) {
    $('loading').hidden = true;
    showError(error);
    $('retry').hidden = false;
    return false;
  }
}

main();
