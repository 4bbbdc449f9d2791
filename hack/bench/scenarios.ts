import { frontendScenario } from './frontend.js';
import { provisioningScenario } from './provisioning.js';
import { routingScenario } from './routing.js';
import { scaleScenario } from './scale.js';
import type { Scenario } from './scenario.js';

/** Every scenario, in the order `make bench` runs them. */
export const scenarios: readonly Scenario[] = [provisioningScenario, scaleScenario, routingScenario, frontendScenario];
