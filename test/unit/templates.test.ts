import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { loadTemplates, resolveParameters } from '../../controller/api/templates.js';

const templatesDir = path.resolve(__dirname, '../../../manifests/templates');

describe('session templates', () => {
  it('loads the shipped templates', () => {
    const templates = loadTemplates(templatesDir);
    assert.deepEqual([...templates.keys()].sort(), ['demo', 'sdl']);
    const sdl = templates.get('sdl')!;
    assert.deepEqual(
      sdl.spec.services.map((service) => service.name),
      ['broker', 'tcp', 'file', 'log', 'policy', 'ws-server', 'store', 'python', 'hmi'],
    );
    assert.equal(sdl.spec.backends.embedded, undefined, 'sdl needs the cluster backend');
  });

  it('fills defaults and checks values against the enums', () => {
    const demo = loadTemplates(templatesDir).get('demo')!;
    assert.deepEqual(resolveParameters(demo, {}), { coreVersion: '8.2.0', hmiType: 'generic' });
    assert.deepEqual(resolveParameters(demo, { coreVersion: '8.1.0' }), { coreVersion: '8.1.0', hmiType: 'generic' });
    assert.throws(() => resolveParameters(demo, { coreVersion: '1.0' }), /\/parameters\/coreVersion: "1.0" is not one of 8.2.0, 8.1.0/);
    assert.throws(() => resolveParameters(demo, { colour: 'red' }), /\/parameters\/colour: unknown parameter/);
  });

  describe('rejects broken template files, naming file and field', () => {
    let dir: string;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-templates-'));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    const demo = (): Record<string, any> => YAML.parse(fs.readFileSync(path.join(templatesDir, 'demo.yaml'), 'utf8'));
    const cases: Array<[string, (t: Record<string, any>) => void, RegExp]> = [
      ['a default outside its enum', (t) => (t.spec.parameters[0].default = '9.9.9'), /\/spec\/parameters\/0\/default: "9.9.9" is not one of its enum values/],
      ['a service whose port no task provides', (t) => (t.spec.services[0].port = 'nowhere'), /\/spec\/services\/0\/port: no embedded task provides port "nowhere"/],
      ['an unknown exposure', (t) => (t.spec.services[0].expose = 'udp'), /\/spec\/services\/0\/expose/],
      ['a duplicate service', (t) => t.spec.services.push(t.spec.services[0]), /"hmi" is defined twice/],
      ['an unknown field', (t) => (t.spec.colour = 'red'), /\/spec: unknown field "colour"/],
    ];
    for (const [what, breakIt, expected] of cases) {
      it(what, () => {
        const template = demo();
        breakIt(template);
        fs.writeFileSync(path.join(dir, 'broken.yaml'), YAML.stringify(template));
        assert.throws(() => loadTemplates(dir), (error: Error) => {
          assert.match(error.message, /broken\.yaml/);
          assert.match(error.message, expected);
          return true;
        });
      });
    }
  });
});
