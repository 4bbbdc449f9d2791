import { schemaOf } from '../../controller/api/schemas.js';

/** The part of the configuration schema the tests look at. */
export interface ConfigSchemaNode {
  properties?: Record<string, ConfigSchemaNode>;
  $ref?: string;
  description?: string;
}

/** Every field and group of the configuration schema below its sections, by path (`auth.jwt.secret`), references resolved. */
export function configSchemaNodes(): Array<{ path: string; node: ConfigSchemaNode }> {
  const nodes: Array<{ path: string; node: ConfigSchemaNode }> = [];
  const definitions = (schemaOf('config').$defs ?? {}) as Record<string, ConfigSchemaNode>;
  const walk = (prefix: string, node: ConfigSchemaNode): void => {
    for (const [name, child] of Object.entries(node.properties ?? {})) {
      const resolved = child.$ref ? { ...definitions[child.$ref.replace('#/$defs/', '')]!, ...child } : child;
      nodes.push({ path: `${prefix}${name}`, node: resolved });
      if (resolved.properties) walk(`${prefix}${name}.`, resolved);
    }
  };
  walk('', schemaOf('config') as ConfigSchemaNode);
  return nodes;
}
