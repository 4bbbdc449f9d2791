import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page, type Route } from 'playwright-core';
import YAML from 'yaml';
import type { Session, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { DEFAULT_STATUS_STREAMS_PER_USER } from '../../controller/frontend/events.js';
import { LogFiles, RotatingLogWriter, closeWriter } from '../../controller/scheduler/log-files.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { frontendKeys, removeSession, testExpiry, testFrontend } from '../support/frontend.js';
import { tcpConversation } from '../support/http.js';
import { isolatedEnvironment, repoRoot, startManticore, stopManticore, waitForFrontend, type ManticoreProcess } from '../support/manticore.js';

/** Debian's Chromium (`make system-deps-test` installs it); playwright-core drives it and brings no browser of its own. */
const chromiumPath = '/usr/bin/chromium';
const screenshots = path.join(repoRoot, 'test-artifacts/web-page');
/** Short enough to watch: the warning comes 8 s after Ready (or after activity) and lasts 16 s. */
const idleTimeoutSeconds = 24;
const idleWarningSeconds = 16;
/** Bounds each wait for something the server does (a session starting, a status change); never a pause. */
const serverStepMs = 30_000;
/** Reference QR symbols of python-qrcode 7.4 (level M, no border), each with the mask the page's encoder picks. */
const referenceQrCodes = JSON.parse(fs.readFileSync(path.join(repoRoot, 'test/fixtures/qr-codes.json'), 'utf8')) as Record<string, string[]>;

/** How often the page reads a session when its event stream is unavailable (app.js). */
const pollIntervalMs = 2000;
/** The GET of one session: what the page reads when it polls instead of following the event stream. */
const sessionRead = /\/api\/v1\/sessions\/[a-z0-9]+$/;

/**
 * Three people in Chromium against `manticore up` (embedded demo template, room for one session, a short idle
 * clock): the first starts a session on a phone-sized screen and follows it over server-sent events; the
 * second, another anonymous user whose event stream is blocked (as by a proxy that breaks it), waits in the
 * queue on the polling fallback and gets the room when the first ends; a third, whose other pages hold every
 * status stream she may have, is told that live updates are paused. Screenshots of every step go to
 * test-artifacts/web-page/.
 */
describe('web page: people in a browser against `manticore up`', function () {
  this.timeout(60_000);
  let stateDir: string;
  let api: string;
  let instance: ManticoreProcess | undefined;
  let browser: Browser;
  let alice: BrowserContext;
  let alicePage: Page;
  /** Alice's second tab, opened on the form before her session exists. */
  let aliceOtherTab: Page;
  let bob: BrowserContext;
  let bobPage: Page;
  let aliceSessionId: string;
  /** What went wrong in the pages: uncaught exceptions and anything the Content-Security-Policy blocked. */
  const pageProblems: string[] = [];
  /** The URLs each page requested. */
  const requested = new Map<Page, string[]>();

  async function newPage(context: BrowserContext): Promise<Page> {
    const page = await context.newPage();
    page.on('pageerror', (error) => pageProblems.push(`uncaught: ${error.message}`));
    page.on('console', (message) => {
      if (message.text().includes('Content Security Policy')) pageProblems.push(message.text());
    });
    requested.set(page, []);
    page.on('request', (request) => requested.get(page)!.push(`${request.method()} ${new URL(request.url()).pathname}`));
    await page.goto(`${api}/`);
    return page;
  }

  const screenshot = (page: Page, name: string) => page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });

  /** The session as the API shows it to the page's user (the context's anonymous cookie). */
  async function sessionOf(context: BrowserContext, id: string): Promise<Session> {
    const response = await context.request.get(`${api}/api/v1/sessions/${id}`);
    assert.equal(response.status(), 200, await response.text());
    return (await response.json()) as Session;
  }

  const phase = (page: Page, text: string | RegExp) => page.locator('#phase', { hasText: text }).waitFor({ timeout: serverStepMs });

  before(async () => {
    if (!fs.existsSync(chromiumPath)) {
      throw new Error(`the browser test needs Chromium at ${chromiumPath}, which is missing: run \`make system-deps-test\` (it installs Debian's chromium package)`);
    }
    fs.rmSync(screenshots, { recursive: true, force: true });
    fs.mkdirSync(screenshots, { recursive: true });
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-web-'));
    // The embedded default, with activity stored at once: the interval must be below the short warning.
    const config = YAML.parse(fs.readFileSync(path.join(repoRoot, 'manifests/examples/embedded.yaml'), 'utf8')) as Record<string, unknown>;
    const configFile = path.join(stateDir, 'config.yaml');
    fs.writeFileSync(configFile, YAML.stringify({ ...config, idle: { activityWriteIntervalSeconds: 1 } }));
    const isolated = await isolatedEnvironment(stateDir, 4);
    api = isolated.api;
    instance = startManticore(configFile, {
      ...process.env,
      ...isolated.env,
      MANTICORE_MAX_SESSIONS: '1',
      MANTICORE_IDLE_TIMEOUT_SECONDS: String(idleTimeoutSeconds),
      MANTICORE_IDLE_WARNING_SECONDS: String(idleWarningSeconds),
      // Sessions may ask for any idle timeout, never included: the form offers the choice.
      MANTICORE_IDLE_MAX_TIMEOUT_SECONDS: '0',
    });
    await waitForFrontend(api, instance);
    // Sandboxed, except as root (as in CI containers), where Chromium cannot sandbox itself.
    browser = await chromium.launch({ executablePath: chromiumPath, headless: true, chromiumSandbox: process.getuid?.() !== 0 });
  });

  after(async () => {
    await browser?.close();
    await stopManticore(instance);
    if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && instance) console.log(instance.output());
  });

  it('draws QR codes exactly as a reference encoder does (versions 1 to 6)', async () => {
    const page = await browser.newPage();
    await page.goto(`${api}/`);
    const texts = Object.keys(referenceQrCodes);
    // The page's own module, imported again in the page (the same instance): its encoder, as rows of # and .
    const drawn = await page.evaluate(
      `import('/web/app.js').then(({ qrMatrix }) => ${JSON.stringify(texts)}.map((text) => qrMatrix(text).map((row) => row.map((dark) => (dark ? '#' : '.')).join(''))))`,
    );
    assert.deepEqual(drawn, Object.values(referenceQrCodes));
    await page.close();
  });

  it('keeps at most the end of a long log: whole lines, or the last characters of output without line ends', async () => {
    const page = await browser.newPage();
    await page.goto(`${api}/`);
    const kept = await page.evaluate(
      `import('/web/app.js').then(({ keepLogTail }) => [keepLogTail('ab\\ncd', 10), keepLogTail('one\\ntwo\\nthree', 8), keepLogTail('x'.repeat(30), 8)])`,
    );
    assert.deepEqual(kept, [
      { text: 'ab\ncd', dropped: false },
      { text: 'three', dropped: true },
      { text: 'x'.repeat(8), dropped: true },
    ]);
    await page.close();
  });

  it('offers an idle timeout only where the operator lets users pick one other than the default, within the limits, and asks for the one picked', async () => {
    const store = EmbeddedStore.open(':memory:');
    /** A front end with the embedded default's limits but for the longest idle timeout a session may ask for. */
    const frontendAllowing = async (idleMaxTimeoutMs: number) => {
      const frontend = testFrontend(store, { expiry: { ...testExpiry, idleMaxTimeoutMs } });
      return { frontend, url: await frontend.start('127.0.0.1', 0) };
    };
    const shortening = await frontendAllowing(testExpiry.idleTimeoutMs);
    const longer = await frontendAllowing(2 * 3600_000);
    // A page (and user) for each front end: they share the store.
    const page = await browser.newPage();
    const other = await browser.newPage();
    for (const each of [page, other]) each.on('pageerror', (error) => pageProblems.push(`uncaught: ${error.message}`));
    try {
      // The default's maximum is the default itself: a user could only shorten it, so nothing is offered.
      await page.goto(`${shortening.url}/`);
      await page.getByRole('heading', { name: 'Start a session' }).waitFor();
      assert.equal(await page.getByLabel('Idle timeout').isVisible(), false);
      await page.getByRole('button', { name: 'Start' }).click();
      await page.getByRole('heading', { name: 'Your session' }).waitFor();
      await page.getByText('Ends after 30 minutes without activity.').waitFor();

      // Up to two hours: the durations within the limits, the default chosen, never not among them.
      await other.goto(`${longer.url}/`);
      const choice = other.getByLabel('Idle timeout');
      await choice.waitFor();
      assert.deepEqual(await choice.locator('option').allTextContents(), ['15 minutes', '30 minutes (default)', '1 hour', '2 hours']);
      assert.equal(await choice.inputValue(), '');
      assert.equal(await other.locator('#idle-timeout-description').innerText(), 'Without activity for this long, the session ends. You are warned 5 minutes before.');
      // From the keyboard.
      await choice.focus();
      await other.keyboard.press('End');
      assert.equal(await choice.inputValue(), '7200');
      await screenshot(other, '00-idle-timeout-choice');
      await other.getByRole('button', { name: 'Start' }).click();
      await other.getByRole('heading', { name: 'Your session' }).waitFor();
      await other.getByText('Ends after 2 hours without activity.').waitFor();
      const records = (await store.list(frontendKeys.sessions)).entries.map((entry) => JSON.parse(entry.value) as SessionRecord);
      assert.deepEqual(records.map((record) => record.spec.idle?.timeoutSeconds).sort(), [7200, undefined], 'the default asks for nothing; the pick is asked for');
    } finally {
      await page.close();
      await other.close();
      await shortening.frontend.stop();
      await longer.frontend.stop();
      await store.close();
    }
  });

  it('shows all of a failed session’s log and says it ends there', async () => {
    const store = EmbeddedStore.open(':memory:');
    const logsRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-web-logs-'));
    const writer = new RotatingLogWriter(path.join(logsRoot, 'alloc-1', 'logs'), 'core.stdout');
    const frontend = testFrontend(store, { logs: { source: new LogFiles({ dirOf: (allocId) => path.join(logsRoot, allocId, 'logs'), log: silentLogger() }), streamsPerUser: 5 } });
    const url = await frontend.start('127.0.0.1', 0);
    const page = await browser.newPage();
    page.on('pageerror', (error) => pageProblems.push(`uncaught: ${error.message}`));
    const status = (phase: string): string => JSON.stringify({ phase, observedGeneration: 1, conditions: [], endpoints: {}, events: [], allocationId: 'alloc-1' });
    try {
      await page.goto(`${url}/`);
      const created = await page.request.post(`${url}/api/v1/sessions`, { data: { template: 'demo' } });
      assert.equal(created.status(), 201, await created.text());
      const { id } = ((await created.json()) as Session).metadata;
      await new Promise<void>((resolve, reject) => writer.write('starting\n', (error) => (error ? reject(error) : resolve())));
      await store.put(frontendKeys.status(id), status('Starting'));
      await page.reload();
      await page.getByRole('heading', { name: 'Your session' }).waitFor({ timeout: serverStepMs });
      const logText = page.locator('#log-text');
      await logText.getByText('starting').waitFor({ timeout: serverStepMs });
      await page.getByText("Following core's stdout live.").waitFor();
      // It fails, its last words written as its job stops.
      await new Promise<void>((resolve, reject) => writer.write('cannot open the config\n', (error) => (error ? reject(error) : resolve())));
      await store.put(frontendKeys.status(id), status('Failed'));
      await page.getByText("This is all of core's stdout: the session failed and its workload has stopped.").waitFor({ timeout: serverStepMs });
      assert.equal(await logText.innerText(), 'starting\ncannot open the config\n');
      assert.equal(await page.locator('#log-follow').isHidden(), true, 'a log that has ended has nothing to pause');
      assert.equal(await page.locator('#log-download').isVisible(), true);
      await screenshot(page, '00-failed-log');
    } finally {
      await page.close();
      await frontend.stop();
      await store.close();
      await closeWriter(writer);
      fs.rmSync(logsRoot, { recursive: true, force: true });
    }
  });

  it('offers the available templates with their parameters, defaults chosen, on a phone-sized screen', async () => {
    alice = await browser.newContext({ viewport: { width: 360, height: 740 }, isMobile: true, acceptDownloads: true });
    alice.setDefaultTimeout(serverStepMs);
    await alice.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: api });
    alicePage = await newPage(alice);
    await alicePage.getByRole('heading', { name: 'Start a session' }).waitFor();
    // The sdl template needs the Nomad backend: not offered here.
    assert.deepEqual(await alicePage.getByLabel('Template').locator('option').allTextContents(), ['demo']);
    assert.equal(await alicePage.getByLabel('coreVersion').inputValue(), '8.2.0');
    assert.equal(await alicePage.getByLabel('hmiType').inputValue(), 'generic');
    // Sessions may ask for any idle timeout here: the durations above the warning, the default chosen, and never.
    const idleTimeouts = alicePage.getByLabel('Idle timeout');
    assert.deepEqual(await idleTimeouts.locator('option').allTextContents(), ['24 seconds (default)', '15 minutes', '30 minutes', '1 hour', '2 hours', '4 hours', '8 hours', 'Never']);
    assert.equal(await idleTimeouts.inputValue(), '');
    await screenshot(alicePage, '01-start-form');
    aliceOtherTab = await newPage(alice);
    await aliceOtherTab.getByRole('heading', { name: 'Start a session' }).waitFor();
  });

  it('starts a session with the chosen parameters', async () => {
    await alicePage.getByLabel('coreVersion').selectOption('8.1.0');
    await alicePage.getByRole('button', { name: 'Start' }).click();
    await alicePage.getByRole('heading', { name: 'Your session' }).waitFor();
    aliceSessionId = await alicePage.locator('#session-id').innerText();
    const { spec } = await sessionOf(alice, aliceSessionId);
    assert.equal(spec.parameters.coreVersion, '8.1.0');
    assert.equal(spec.idle, undefined, 'the default idle timeout is not asked for');
    await alicePage.getByText(`Ends after ${idleTimeoutSeconds} seconds without activity.`).waitFor();
    await screenshot(alicePage, '02-started');
  });

  it('shows the session a user already has instead of starting another (409, or on reload)', async () => {
    await aliceOtherTab.getByRole('button', { name: 'Start' }).click();
    await aliceOtherTab.getByText('You already have a session; here it is.').waitFor();
    assert.equal(await aliceOtherTab.locator('#session-id').innerText(), aliceSessionId);
    await aliceOtherTab.reload();
    await aliceOtherTab.getByRole('heading', { name: 'Your session' }).waitFor();
    assert.equal(await aliceOtherTab.locator('#session-id').innerText(), aliceSessionId);
    assert.equal(await aliceOtherTab.locator('#start').isVisible(), false);
    await aliceOtherTab.close();
  });

  it('shows an error from the API with its details, and a second user waiting in the queue', async () => {
    bob = await browser.newContext({ viewport: { width: 1024, height: 768 } });
    bob.setDefaultTimeout(serverStepMs);
    // Bob's event streams fail, as behind a proxy that breaks them: his page must poll.
    await bob.route('**/api/v1/sessions/*/events', (route) => route.abort());
    bobPage = await newPage(bob);
    await bobPage.getByRole('heading', { name: 'Start a session' }).waitFor();
    // A value the form does not offer, for the server to refuse.
    await bobPage.evaluate(`document.getElementById('parameter-coreVersion').append(new Option('9.9.9', '9.9.9'))`);
    await bobPage.getByLabel('coreVersion').selectOption('9.9.9');
    await bobPage.getByRole('button', { name: 'Start' }).click();
    await bobPage.getByRole('alert').filter({ hasText: '/parameters/coreVersion' }).waitFor();
    await screenshot(bobPage, '03-error');

    await bobPage.getByLabel('coreVersion').selectOption('8.2.0');
    await bobPage.getByLabel('Idle timeout').selectOption({ label: '1 hour' });
    await bobPage.getByRole('button', { name: 'Start' }).click();
    await phase(bobPage, 'Waiting for room');
    assert.deepEqual((await sessionOf(bob, await bobPage.locator('#session-id').innerText())).spec.idle, { timeoutSeconds: 3600 });
    await bobPage.getByText('Ends after 1 hour without activity.').waitFor();
    await bobPage.getByText('You are number 1 in the queue.').waitFor({ timeout: serverStepMs });
    await bobPage.getByText(/^(Estimated start: .+|No start time can be estimated yet\.)$/).waitFor();
    assert.equal(await bobPage.locator('#error').isVisible(), false, 'the error is gone');
    await screenshot(bobPage, '04-second-user-waiting');
  });

  it('says that live updates are paused when the user has too many pages open (429), still shows the session, and goes live once a page closes', async () => {
    const carol = await browser.newContext();
    carol.setDefaultTimeout(serverStepMs);
    // The page's timers run on a clock the test moves: the refused stream is tried again 30 s on.
    await carol.clock.install();
    const held: AbortController[] = [];
    let id: string | undefined;
    try {
      const created = await carol.request.post(`${api}/api/v1/sessions`, { data: { template: 'demo' } });
      assert.equal(created.status(), 201, await created.text());
      id = ((await created.json()) as Session).metadata.id;
      const user = (await carol.cookies(api)).find((cookie) => cookie.name === 'manticore_user') ?? assert.fail('no user cookie');
      // Every status stream Carol may have, as held by her other pages.
      for (let open = 0; open < DEFAULT_STATUS_STREAMS_PER_USER; open++) {
        const stream = new AbortController();
        held.push(stream);
        const response = await fetch(`${api}/api/v1/sessions/${id}/events`, { headers: { cookie: `manticore_user=${user.value}`, accept: 'text/event-stream' }, signal: stream.signal });
        assert.equal(response.status, 200);
      }
      const page = await newPage(carol);
      const notice = page.getByRole('status').filter({ hasText: 'Live updates paused' });
      await notice.waitFor({ timeout: 5 * pollIntervalMs });
      assert.equal(await notice.innerText(), 'Live updates paused: too many open pages for this user; refreshing every 2 s and trying again every 30 s.');
      assert.equal(await notice.getAttribute('aria-live'), 'polite');
      await phase(page, 'Waiting for room');
      await screenshot(page, '04b-live-updates-paused');

      // One of her other pages closes: the next try gets a stream, and the notice goes.
      held.pop()!.abort();
      await page.clock.runFor(29_000);
      assert.equal(await notice.count(), 1, 'not tried again before 30 s');
      // The front end counts the stream out once it sees its socket close: a try before that is refused again.
      for (let attempt = 1; ; attempt++) {
        const answered = page.waitForResponse((response) => response.url().endsWith('/events') && response.request().resourceType() === 'eventsource');
        await page.clock.runFor(attempt === 1 ? 1_000 : 30_000);
        const status = (await answered).status();
        if (status === 200) break;
        assert.equal(status, 429);
        assert.ok(attempt < 5, 'the stream closed was still counted after five tries');
      }
      await notice.waitFor({ state: 'detached' });
      await page.close();
    } finally {
      for (const stream of held) stream.abort();
      // Out of the queue, where Bob is next.
      if (id !== undefined) assert.equal((await carol.request.delete(`${api}/api/v1/sessions/${id}`)).status(), 202);
      await carol.close();
    }
  });

  it('shows the Ready session: the HMI link, every address with a copy button, the TCP port large with its QR code', async () => {
    await phase(alicePage, /^Ready$/);
    const session = await sessionOf(alice, aliceSessionId);
    const { hmi, broker, tcp } = session.status.endpoints;

    const hmiLink = alicePage.getByRole('link', { name: 'Open the HMI' });
    assert.equal(await hmiLink.getAttribute('href'), hmi!.url);
    const [hmiTab] = await Promise.all([alice.waitForEvent('page'), hmiLink.click()]);
    await hmiTab!.waitForLoadState();
    assert.equal(await hmiTab!.title(), 'Manticore demo HMI');
    await hmiTab!.close();

    for (const [name, endpoint] of Object.entries(session.status.endpoints)) {
      assert.equal(await alicePage.getByLabel(`${name} address`, { exact: true }).inputValue(), endpoint.url);
    }
    const copyBroker = alicePage.getByRole('button', { name: 'Copy the broker address' });
    await copyBroker.click();
    await alicePage.getByRole('button', { name: 'Copied the broker address' }).filter({ hasText: 'Copied' }).waitFor();
    assert.equal(await alicePage.evaluate('navigator.clipboard.readText()'), broker!.url);

    const { hostname, port } = new URL(tcp!.url);
    assert.equal(await alicePage.locator('.tcp .host').innerText(), hostname);
    assert.equal(await alicePage.locator('.tcp .port').innerText(), port);
    const qr = alicePage.getByRole('img', { name: `QR code of ${hostname}:${port}` });
    await qr.waitFor();
    // The drawing is the encoder's symbol (checked against the reference above), module for module.
    const modules = new Set(((await qr.locator('path').getAttribute('d')) ?? '').match(/M\d+ \d+/g));
    const expected = (await alicePage.evaluate(`import('/web/app.js').then(({ qrMatrix }) => qrMatrix(${JSON.stringify(`${hostname}:${port}`)}))`)) as boolean[][];
    const quietZone = 4;
    assert.deepEqual(modules, new Set(expected.flatMap((row, y) => row.flatMap((dark, x) => (dark ? [`M${x + quietZone} ${y + quietZone}`] : [])))));
    // And what it says works: the session's Core answers there, with the version chosen in the form.
    assert.equal((await tcpConversation(`tcp://${hostname}:${port}`, 'hello')).greeting, 'manticore demo core 8.1.0');

    assert.ok(((await alicePage.evaluate('document.documentElement.scrollWidth')) as number) <= 360, 'nothing overflows a 360 px screen');
    assert.equal(await alicePage.locator('#live-updates').textContent(), '', 'followed live: nothing to say');
    await screenshot(alicePage, '05-ready');
  });

  it('goes back to the event stream after it broke (a network drop, the front end restarting), not to polling for good', async () => {
    const session = await sessionOf(alice, aliceSessionId);
    const tab = await alice.newPage();
    const streamPath = `/api/v1/sessions/${aliceSessionId}/events`;
    let routed = 0;
    // The first stream delivers the session and ends, as one cut by a network drop or a front end stopping.
    await tab.route(`**${streamPath}`, (route) =>
      ++routed === 1 ? route.fulfill({ status: 200, contentType: 'text/event-stream', body: `event: session\ndata: ${JSON.stringify(session)}\n\n` }) : route.continue(),
    );
    let opened = 0;
    const reopened = tab.waitForRequest((request) => new URL(request.url()).pathname === streamPath && ++opened === 2, { timeout: 5 * pollIntervalMs });
    await tab.goto(`${api}/`);
    await phase(tab, /^Ready$/);
    await reopened;
    await tab.close();
  });

  it('holds no stream while the tab is hidden (browsers allow six connections to a host), and catches up when it is shown again', async () => {
    assert.equal((await alice.request.post(`${api}/api/v1/sessions/${aliceSessionId}/keepalive`)).status(), 200);
    const tab = await alice.newPage();
    // Counts the page's event streams still open.
    await tab.addInitScript(`{
      const Native = window.EventSource;
      const opened = [];
      window.openStreams = () => opened.filter((source) => source.readyState !== Native.CLOSED).length;
      window.EventSource = class extends Native {
        constructor(...args) {
          super(...args);
          opened.push(this);
        }
      };
    }`);
    // Headless pages are always visible: the page is told otherwise as a browser would tell it.
    const setHidden = (hidden: boolean): Promise<unknown> =>
      tab.evaluate(`{
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => ${hidden} });
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => '${hidden ? 'hidden' : 'visible'}' });
        document.dispatchEvent(new Event('visibilitychange'));
      }`);
    const openStreams = async (): Promise<number> => (await tab.evaluate('window.openStreams()')) as number;
    const logText = tab.locator('#log-text');
    await tab.goto(`${api}/`);
    await phase(tab, /^Ready$/);
    await tab.locator('#log-status').filter({ hasText: "Following core's stdout live." }).waitFor({ timeout: serverStepMs });
    assert.equal(await openStreams(), 2, "the session's and its log's");

    await setHidden(true);
    assert.equal(await openStreams(), 0, 'a hidden tab holds none');
    await tcpConversation((await sessionOf(alice, aliceSessionId)).status.endpoints.tcp!.url, 'said while the tab was hidden');
    await setHidden(false);
    await logText.filter({ hasText: 'said while the tab was hidden' }).waitFor({ timeout: serverStepMs });
    assert.equal(await openStreams(), 2, 'both followed again');
    assert.equal((await logText.innerText()).split('websocket echo on').length, 2, 'the log resumes where it stopped, repeating nothing');
    await phase(tab, /^Ready$/);
    await tab.close();
  });

  it("shows the session's logs: Core's output live, searched, paused and caught up, another stream and task, downloaded", async () => {
    // The idle clock starts over, so the warning test after this one gets its whole window.
    assert.equal((await alice.request.post(`${api}/api/v1/sessions/${aliceSessionId}/keepalive`)).status(), 200);
    const tcp = (await sessionOf(alice, aliceSessionId)).status.endpoints.tcp!.url;
    const logText = alicePage.locator('#log-text');
    const shows = (text: string | RegExp) => logText.filter({ hasText: text }).waitFor({ timeout: serverStepMs });
    await alicePage.getByRole('heading', { name: 'Logs' }).waitFor();
    assert.equal(await alicePage.getByRole('tab', { name: 'core' }).getAttribute('aria-selected'), 'true');
    await shows('websocket echo on');
    // An app talks to Core; the line Core logs shows up as it happens.
    await tcpConversation(tcp, 'hello from the phone app');
    await shows('hello from the phone app');
    await alicePage.locator('#log-status').filter({ hasText: "Following core's stdout live." }).waitFor();

    await alicePage.getByLabel('Search').fill('PHONE app');
    assert.deepEqual(await logText.locator('mark').allInnerTexts(), ['phone app']);
    assert.equal(await alicePage.locator('#log-matches').innerText(), '1 match.');
    await alicePage.getByLabel('Matching lines only').check();
    assert.match(await logText.innerText(), /^\S+ tcp \S+: hello from the phone app$/);
    await alicePage.getByLabel('Matching lines only').uncheck();
    await alicePage.getByLabel('Search').fill('');
    await screenshot(alicePage, '05b-logs');

    await alicePage.getByRole('button', { name: 'Pause' }).click();
    await tcpConversation(tcp, 'said while paused');
    assert.doesNotMatch(await logText.innerText(), /said while paused/, 'a paused log does not move');
    await alicePage.getByRole('button', { name: 'Follow' }).click();
    await shows('said while paused');
    const text = await logText.innerText();
    assert.equal(text.split('hello from the phone app').length, 2, 'catching up repeats nothing');

    const [download] = await Promise.all([alicePage.waitForEvent('download'), alicePage.getByRole('button', { name: 'Download' }).click()]);
    assert.equal(download.suggestedFilename(), `${aliceSessionId}-core-stdout.log`);
    assert.match(fs.readFileSync((await download.path())!, 'utf8'), /hello from the phone app\n.*said while paused\n/s);

    await alicePage.getByLabel('Stream').selectOption('stderr');
    await shows('a demo stand-in for SDL Core');
    await alicePage.getByLabel('Stream').selectOption('stdout');
    await alicePage.getByRole('tab', { name: 'hmi' }).click();
    await shows('demo hmi (generic): http on');
    await alicePage.getByRole('tab', { name: 'core' }).click();
    await shows('said while paused');
    // From the keyboard: the tab list is one tab stop, and the arrow keys, Home and End pick a task.
    const tabStops = () => alicePage.locator('#log-tasks [role=tab]').evaluateAll((tabs) => tabs.map((tab) => `${tab.textContent}:${tab.getAttribute("tabindex")}`));
    assert.deepEqual(await tabStops(), ['core:0', 'hmi:-1']);
    await alicePage.getByRole('tab', { name: 'core' }).focus();
    await alicePage.keyboard.press('ArrowRight');
    await shows('demo hmi (generic): http on');
    assert.equal(await alicePage.getByRole('tab', { name: 'hmi' }).getAttribute('aria-selected'), 'true');
    assert.equal(await alicePage.evaluate('document.activeElement.id'), 'log-tab-hmi');
    assert.deepEqual(await tabStops(), ['core:-1', 'hmi:0']);
    await alicePage.keyboard.press('ArrowRight');
    assert.equal(await alicePage.evaluate('document.activeElement.id'), 'log-tab-core', '→ on the last tab wraps to the first');
    await shows('said while paused');
    await alicePage.keyboard.press('End');
    assert.equal(await alicePage.getByRole('tab', { name: 'hmi' }).getAttribute('aria-selected'), 'true');
    await alicePage.keyboard.press('Home');
    await shows('said while paused');
    assert.ok(((await alicePage.evaluate('document.documentElement.scrollWidth')) as number) <= 360, 'the logs fit a 360 px screen');
  });

  it('warns an idle session with a live countdown; "I\'m still here" keeps it', async () => {
    const warning = alicePage.getByRole('alert').filter({ hasText: 'idle' });
    await warning.waitFor({ timeout: (idleTimeoutSeconds - idleWarningSeconds) * 1000 + serverStepMs });
    const seconds = (shown: string): number => {
      const [, minutes, rest] = /^(\d+):(\d\d)$/.exec(shown) ?? assert.fail(`countdown "${shown}"`);
      return Number(minutes) * 60 + Number(rest);
    };
    const secondsLeft = async (page: Page): Promise<number> => seconds(await page.getByRole('timer').innerText());
    const countdown = alicePage.getByRole('timer');
    const first = await countdown.innerText();
    assert.ok((await secondsLeft(alicePage)) <= idleWarningSeconds, first);
    await countdown.filter({ hasNotText: first }).waitFor({ timeout: 5000 });
    await screenshot(alicePage, '06-idle-warning');

    // A browser whose clock is ten minutes slow counts down the time the server leaves, not ten minutes more.
    const slowClock = await alice.newPage();
    await slowClock.clock.install({ time: Date.now() - 10 * 60_000 });
    await slowClock.goto(`${api}/`);
    await slowClock.getByRole('alert').filter({ hasText: 'idle' }).waitFor();
    // Against the server's own deadline (the page in the background, alicePage now, stops redrawing), at the
    // moment the page draws the countdown, on the page's clock: a countdown read on real time was up to a
    // second old, and the test's own requests took time on top.
    const expiresAt = Date.parse((await sessionOf(alice, aliceSessionId)).status.expiresAt!);
    const sentAt = Date.now();
    const pageNow = (await slowClock.evaluate('Date.now()')) as number;
    // The page's clock runs this far behind real time, give or take the round trip.
    const behind = { least: sentAt - pageNow, most: Date.now() - pageNow };
    const drawn = (await slowClock.evaluate(`new Promise((resolve) => {
      const countdown = document.getElementById('countdown');
      const redrawn = new MutationObserver(() => {
        redrawn.disconnect();
        resolve({ shown: countdown.textContent, at: Date.now() });
      });
      redrawn.observe(countdown, { childList: true, characterData: true, subtree: true });
    })`)) as { shown: string; at: number };
    const left = seconds(drawn.shown);
    const serverLeft = { least: (expiresAt - drawn.at - behind.most) / 1000, most: (expiresAt - drawn.at - behind.least) / 1000 };
    assert.ok(
      left <= idleWarningSeconds && left >= serverLeft.least - 2 && left <= serverLeft.most + 2,
      `${left} s left, the server says ${serverLeft.least.toFixed(1)} to ${serverLeft.most.toFixed(1)} s`,
    );
    await slowClock.close();

    await alicePage.getByRole('button', { name: "I'm still here" }).click();
    await alicePage.locator('#idle-warning').waitFor({ state: 'hidden', timeout: serverStepMs });
    const idle = (await sessionOf(alice, aliceSessionId)).status.conditions.find((condition) => condition.type === 'IdleWarning');
    assert.equal(idle?.status, 'False', JSON.stringify(idle));
    await screenshot(alicePage, '07-still-here');
  });

  it('ends the session: Terminating, then ended; followed live, never polled', async () => {
    // Terminating may last a moment only: every text the status shows is recorded as it changes.
    await alicePage.evaluate(
      `window.phases = []; const phase = document.getElementById('phase'); new MutationObserver(() => phases.push(phase.textContent)).observe(phase, { childList: true, characterData: true, subtree: true })`,
    );
    await alicePage.getByRole('button', { name: 'End session' }).click();
    await alicePage.getByRole('heading', { name: 'Session ended' }).waitFor({ timeout: serverStepMs });
    await alicePage.getByText('You ended the session.').waitFor();
    assert.ok(((await alicePage.evaluate('phases')) as string[]).includes('Ending the session…'));
    assert.equal((await alice.request.get(`${api}/api/v1/sessions/${aliceSessionId}`)).status(), 404);
    const aliceRequests = requested.get(alicePage)!;
    assert.ok(aliceRequests.includes(`GET /api/v1/sessions/${aliceSessionId}/events`), aliceRequests.join('\n'));
    assert.deepEqual(aliceRequests.filter((request) => sessionRead.test(request) && request.startsWith('GET')), [], 'no polling');
    await screenshot(alicePage, '08-ended');
  });

  it('gives the second user the room: Ready on the polling fallback, then ended', async () => {
    await phase(bobPage, /^Ready$/);
    await bobPage.getByRole('link', { name: 'Open the HMI' }).waitFor();
    await bobPage.getByRole('img', { name: /^QR code of / }).waitFor();
    await screenshot(bobPage, '09-second-user-ready');
    assert.ok(requested.get(bobPage)!.filter((request) => request.startsWith('GET') && sessionRead.test(request)).length > 1, 'Bob’s page polled');

    await bobPage.getByRole('button', { name: 'End session' }).click();
    await bobPage.getByRole('heading', { name: 'Session ended' }).waitFor({ timeout: serverStepMs });
    await screenshot(bobPage, '10-second-user-ended');
    assert.deepEqual(pageProblems, []);
  });
});

/**
 * The page as keyboard and screen reader users meet it, against a front end alone (no controller: a session
 * stays queued until the test removes it), and its answers to a front end that fails or cannot be reached.
 */
describe('web page: keyboard use, and a front end that fails', function () {
  this.timeout(60_000);
  let browser: Browser;
  let store: EmbeddedStore;
  let frontend: ReturnType<typeof testFrontend>;
  let url: string;
  let page: Page;
  const pageProblems: string[] = [];

  before(async () => {
    browser = await chromium.launch({ executablePath: chromiumPath, headless: true, chromiumSandbox: process.getuid?.() !== 0 });
    store = EmbeddedStore.open(':memory:');
    frontend = testFrontend(store);
    url = await frontend.start('127.0.0.1', 0);
  });

  after(async () => {
    await browser?.close();
    await frontend?.stop();
    await store?.close();
  });

  beforeEach(async () => {
    page = await browser.newPage();
    page.setDefaultTimeout(serverStepMs);
    page.on('pageerror', (error) => pageProblems.push(`uncaught: ${error.message}`));
  });

  afterEach(async () => {
    await page.close();
    assert.deepEqual(pageProblems, []);
  });

  /** The id of the element that has the focus ('' for none: the body). */
  const focused = (): Promise<unknown> => page.evaluate('document.activeElement.id');

  /** Loads the page and creates a session as its user, given `status` (Ready on allocation alloc-1 unless said otherwise); its id. */
  async function sessionWithStatus(status: Partial<SessionStatus> = {}): Promise<string> {
    await page.goto(`${url}/`);
    const created = await page.request.post(`${url}/api/v1/sessions`, { data: { template: 'demo' } });
    assert.equal(created.status(), 201, await created.text());
    const { id } = ((await created.json()) as Session).metadata;
    const full: SessionStatus = { phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [], allocationId: 'alloc-1', ...status };
    await store.put(frontendKeys.status(id), JSON.stringify(full));
    return id;
  }

  it('moves the focus to what replaced the part of the page that had it: the session once started, the form once asked for again', async () => {
    await page.goto(`${url}/`);
    await page.getByRole('heading', { name: 'Start a session' }).waitFor();
    await page.getByRole('button', { name: 'Start' }).focus();
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Your session' }).waitFor();
    assert.equal(await focused(), 'session-title', 'the form that had the focus is gone: the session it started has it');

    await removeSession(store, await page.locator('#session-id').innerText());
    await page.getByRole('heading', { name: 'Session ended' }).waitFor();
    assert.equal(await focused(), 'ended-title');
    await page.keyboard.press('Tab');
    assert.equal(await focused(), 'new-session');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Start a session' }).waitFor();
    assert.equal(await focused(), 'start-title');
  });

  it('offers to try again when the page cannot load (503, the network down), and loads the form when it can', async () => {
    const answers: Array<(route: Route) => Promise<void>> = [
      (route) => route.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: 'the service could not complete the request; try again', details: [] }) }),
      (route) => route.abort('internetdisconnected'),
    ];
    await page.route('**/api/v1/templates', (route) => (answers.shift() ?? ((each: Route) => each.continue()))(route));
    await page.goto(`${url}/`);
    const alert = page.getByRole('alert');
    await alert.filter({ hasText: 'the service could not complete the request; try again' }).waitFor();
    const retry = alert.getByRole('button', { name: 'Try again' });
    await retry.focus();
    await page.keyboard.press('Enter');
    await alert.filter({ hasText: 'Manticore cannot be reached. Check your connection and try again.' }).waitFor();
    assert.equal(await focused(), 'retry', 'the button stays for another try');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Start a session' }).waitFor();
    assert.equal(await alert.count(), 0, 'the error is gone');
    assert.equal(await page.locator('#loading').isVisible(), false);
    assert.equal(await focused(), 'start-title');
  });

  it('says once that the front end cannot be reached while it is down, not at every read of the session, and clears it once it answers', async () => {
    await page.clock.install();
    // The status stream is blocked, as by a proxy that breaks it: the page reads the session every 2 s.
    await page.route('**/api/v1/sessions/*/events', (route) => route.abort());
    await page.goto(`${url}/`);
    assert.equal((await page.request.post(`${url}/api/v1/sessions`, { data: { template: 'demo' } })).status(), 201);
    await page.reload();
    await page.getByRole('heading', { name: 'Your session' }).waitFor();
    await page.clock.runFor(10_000);
    // Failed reads are tried again ever less often: fake time passes in small steps until each read comes.
    const reads = async (count: number): Promise<void> => {
      for (let read = 0; read < count; read++) {
        let seen = false;
        const requested = page.waitForRequest((request) => sessionRead.test(new URL(request.url()).pathname)).then(() => (seen = true));
        for (let step = 0; !seen && step < 200; step++) await page.clock.runFor(100);
        await requested;
      }
    };
    await reads(1);

    // The network goes down: each read fails the same way.
    await page.route(sessionRead, (route) => route.abort('internetdisconnected'));
    await page.evaluate(`window.alertChanges = 0; new MutationObserver((changes) => { alertChanges += changes.length; }).observe(document.getElementById('error'), { subtree: true, childList: true, characterData: true, attributes: true })`);
    // The second read's request comes once the first's failure is shown (its timer set then).
    await reads(2);
    const alert = page.getByRole('alert').filter({ hasText: 'Manticore cannot be reached' });
    assert.equal(await alert.count(), 1);
    const shown = (await page.evaluate('alertChanges')) as number;
    await reads(3);
    assert.equal(await page.evaluate('alertChanges'), shown, 'an alert is read out again whenever its text is written');

    await page.unroute(sessionRead);
    await reads(1);
    await alert.waitFor({ state: 'detached' });
  });

  it('comes back spread out and ever less often when its stream breaks and the front end does not answer (a restart): not every page at once, every 2 s', async () => {
    await page.clock.install();
    // Every page draws its own waits; this one draws 0.75 each time. The times of its reads are kept.
    await page.addInitScript(`Math.random = () => 0.75;
      window.readTimes = [];
      const nativeFetch = window.fetch;
      window.fetch = (...args) => {
        if (/^\\/api\\/v1\\/sessions\\/[^/]+$/.test(String(args[0]))) readTimes.push(Date.now());
        return nativeFetch(...args);
      };`);
    await page.goto(`${url}/`);
    const created = await page.request.post(`${url}/api/v1/sessions`, { data: { template: 'demo' } });
    const session = { ...(await created.json()), status: { phase: 'Waiting', conditions: [], events: [], endpoints: {}, queuePosition: 1 } };
    let streams = 0;
    // The first stream delivers the session and breaks, as at a front end's crash; the front end then answers nothing.
    await page.route('**/api/v1/sessions/*/events', (route) =>
      ++streams === 1 ? route.fulfill({ status: 200, contentType: 'text/event-stream', body: `event: session\ndata: ${JSON.stringify(session)}\n\n` }) : route.abort(),
    );
    await page.route(sessionRead, (route) => route.abort('internetdisconnected'));
    await page.reload();
    await page.getByRole('heading', { name: 'Your session' }).waitFor();
    const readTimes = async (): Promise<number[]> => (await page.evaluate('readTimes')) as number[];
    // Small fake steps, each with time for the page to see a read fail and set its next wait.
    const until = async (reads: number): Promise<void> => {
      for (let step = 0; (await readTimes()).length < reads && step < 2_000; step++) await page.clock.runFor(100);
    };
    await until(7);
    const times = await readTimes();
    const waits = times.slice(1).map((time, index) => time - times[index]!);
    // 2 s doubling to 10 s, each drawn between half of it and half again; the first read comes within a poll's time of the break.
    const expected = [2_000, 4_000, 8_000, 10_000, 10_000, 10_000].map((wait) => wait * 1.25);
    waits.forEach((wait, index) => assert.ok(wait >= expected[index]! && wait < expected[index]! + 300, `wait ${index + 1}: ${wait} ms, not ${expected[index]} ms (${waits.join(', ')})`));

    // The front end answers again: the stream is opened again after a drawn wait, not at once.
    await page.unroute(sessionRead);
    await until(8);
    const answered = (await readTimes()).at(-1)!;
    const reopened = page.waitForRequest((request) => /\/events$/.test(new URL(request.url()).pathname));
    await page.clock.runFor(2_000 * 1.25 + 300);
    await reopened;
    assert.ok((await page.evaluate('Date.now()')) as number >= answered + 2_000 * 1.25);
  });

  it('keeps the focus on a button pressed while it works, and in the session when the button goes: "I\'m still here" once heard, "End session" once ending', async () => {
    await page.goto(`${url}/`);
    await page.getByRole('heading', { name: 'Start a session' }).waitFor();
    // A value the form does not offer, for the server to refuse: the focus stays on Start, to try again.
    await page.evaluate(`document.getElementById('parameter-coreVersion').append(new Option('9.9.9', '9.9.9'))`);
    await page.getByLabel('coreVersion').selectOption('9.9.9');
    await page.getByRole('button', { name: 'Start' }).focus();
    await page.keyboard.press('Enter');
    await page.getByRole('alert').filter({ hasText: '/parameters/coreVersion' }).waitFor();
    assert.equal(await focused(), 'start-button');

    const created = await page.request.post(`${url}/api/v1/sessions`, { data: { template: 'demo' } });
    assert.equal(created.status(), 201, await created.text());
    const { id } = ((await created.json()) as Session).metadata;
    const idleWarning = (status: 'True' | 'False'): string =>
      JSON.stringify({
        phase: 'Ready',
        observedGeneration: 1,
        conditions: [{ type: 'IdleWarning', status, reason: 'Idle', message: '', lastTransitionTime: new Date().toISOString() }],
        endpoints: {},
        events: [],
        expiresAt: new Date(Date.now() + 300_000).toISOString(),
      });
    await store.put(frontendKeys.status(id), idleWarning('True'));
    await page.reload();
    await page.getByRole('button', { name: "I'm still here" }).focus();
    const keptAlive = page.waitForResponse((response) => response.url().endsWith('/keepalive'));
    await page.keyboard.press('Enter');
    assert.equal((await keptAlive).status(), 200);
    // The controller has seen the activity.
    await store.put(frontendKeys.status(id), idleWarning('False'));
    await page.locator('#idle-warning').waitFor({ state: 'hidden' });
    assert.equal(await focused(), 'session-title');

    await page.getByRole('button', { name: 'End session' }).focus();
    await page.keyboard.press('Enter');
    await page.getByText('Ending the session…').waitFor();
    assert.equal(await focused(), 'session-title');
  });

  it('says once that the log stream broke while it reconnects, not again at every try', async () => {
    const id = await sessionWithStatus();
    // The log stream's connection drops at every try, as while the front end restarts.
    let tries = 0;
    let triedFourTimes: () => void = () => {};
    const fourTries = new Promise<void>((resolve) => (triedFourTimes = resolve));
    await page.route(`**/api/v1/sessions/${id}/logs?*`, async (route) => {
      if (++tries === 4) triedFourTimes();
      await route.abort('connectionreset');
    });
    await page.reload();
    const status = page.getByRole('status').filter({ hasText: 'The log stream broke; reconnecting…' });
    await status.waitFor();
    await page.evaluate(`window.statusChanges = 0; new MutationObserver((changes) => { statusChanges += changes.length; }).observe(document.getElementById('log-status'), { subtree: true, childList: true, characterData: true })`);
    // The browser tries again a few seconds after each failure, once the page has heard of it: the second
    // and third failures have been heard by the fourth try.
    await fourTries;
    assert.equal(await page.evaluate('statusChanges'), 0, 'a status region is read out again whenever its text is written');
  });

  it('draws the edges of the fields to fill in (selects, the log search) at 3:1 against the page at least, light and dark (WCAG 1.4.11)', async () => {
    /** The contrast ratio of a field's top border to the page's background, as WCAG defines it, from the computed colours. */
    const edgeContrast = (selector: string): Promise<unknown> =>
      page.evaluate(`(() => {
        const luminance = (colour) => {
          const [r, g, b] = colour.match(/[\\d.]+/g).slice(0, 3).map((value) => {
            const c = Number(value) / 255;
            return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
          });
          return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const [edge, page] = [getComputedStyle(document.querySelector(${JSON.stringify(selector)})).borderTopColor, getComputedStyle(document.body).backgroundColor].map(luminance);
        return (Math.max(edge, page) + 0.05) / (Math.min(edge, page) + 0.05);
      })()`);
    await page.goto(`${url}/`);
    await page.getByRole('heading', { name: 'Start a session' }).waitFor();
    const created = await page.request.post(`${url}/api/v1/sessions`, { data: { template: 'demo' } });
    const { id } = ((await created.json()) as Session).metadata;
    for (const colorScheme of ['light', 'dark'] as const) {
      await page.emulateMedia({ colorScheme });
      const ratio = (await edgeContrast('#template')) as number;
      assert.ok(ratio >= 3, `the template select's edge, ${colorScheme}: ${ratio.toFixed(2)}:1`);
    }
    await store.put(frontendKeys.status(id), JSON.stringify({ phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [], allocationId: 'alloc-1' }));
    await page.reload();
    await page.getByLabel('Search').waitFor();
    for (const colorScheme of ['light', 'dark'] as const) {
      await page.emulateMedia({ colorScheme });
      const ratio = (await edgeContrast('#log-search')) as number;
      assert.ok(ratio >= 3, `the log search's edge, ${colorScheme}: ${ratio.toFixed(2)}:1`);
    }
  });

  it('says which address was copied last, on its button and in its name, and no other', async () => {
    await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
    const endpoints = { broker: { protocol: 'ws', url: 'ws://broker.example.test/' }, tcp: { protocol: 'tcp', url: 'tcp://tcp.example.test:31234' } } as const;
    await sessionWithStatus({ endpoints, allocationId: undefined });
    await page.reload();
    const buttons = (): Promise<string[]> => page.locator('#endpoint-list button').evaluateAll((all) => all.map((button) => `${button.textContent}: ${button.getAttribute('aria-label')}`));
    assert.deepEqual(await buttons(), ['Copy: Copy the broker address', 'Copy: Copy the tcp address']);
    await page.getByRole('button', { name: 'Copy the broker address' }).click();
    await page.getByRole('button', { name: 'Copied the broker address' }).filter({ hasText: 'Copied' }).waitFor();
    await page.getByRole('button', { name: 'Copy the tcp address' }).click();
    await page.getByRole('button', { name: 'Copied the tcp address' }).waitFor();
    assert.deepEqual(await buttons(), ['Copy: Copy the broker address', 'Copied: Copied the tcp address']);
    assert.equal(await page.evaluate('navigator.clipboard.readText()'), endpoints.tcp.url);
  });

  it('gives the log output a role its name may go with: a region named "Log output", reached by Tab to scroll it from the keyboard', async () => {
    await sessionWithStatus();
    await page.reload();
    await page.getByRole('button', { name: 'Download' }).focus();
    await page.keyboard.press('Tab');
    // A name on an element of no role (a pre is generic) is one screen readers need not say (ARIA 1.2).
    assert.equal(await page.getByRole('region', { name: 'Log output' }).count(), 1);
    assert.equal(await focused(), 'log-text');
  });

  it('says why a log cannot be read as a sentence of its own, before saying it tries again', async () => {
    await sessionWithStatus();
    await page.reload();
    // This front end reads no logs: the API says so, without a full stop.
    await page.getByRole('status').filter({ hasText: 'Trying again in a moment.' }).waitFor();
    assert.equal(await page.locator('#log-status').innerText(), 'task logs are not available from this front end. Trying again in a moment.');
  });
});
