import { HttpError, type JsonObject } from './types.js';

/**
 * Nomad's event broker as the double keeps it (nomad/stream): every state write publishes the events of
 * the objects it changed, at the write's index, into a ring buffer of the last `size` writes (the servers'
 * `event_buffer_size`, default 100). A subscription replays the buffer from its start index, then follows
 * new writes, each delivered as one frame `{"Index":N,"Events":[…]}` of the events its filter lets through.
 */

export type Topic = 'Job' | 'Allocation' | 'Evaluation' | 'Node';

/** Nomad's event types (structs.Type…), one per write as Nomad gives one per raft message. */
export type EventType =
  | 'JobRegistered'
  | 'JobDeregistered'
  | 'EvaluationUpdated'
  | 'AllocationUpdated'
  | 'AllocationUpdateDesiredStatus'
  | 'PlanResult'
  | 'NodeRegistration'
  | 'NodeDeregistration'
  | 'NodeEvent';

export interface StreamEvent {
  Topic: Topic;
  Type: EventType;
  Key: string;
  /** Empty for objects without a namespace (nodes). */
  Namespace: string;
  FilterKeys: string[] | null;
  Payload: JsonObject;
}

export const DEFAULT_EVENT_BUFFER_SIZE = 100;

/** What `GET /v1/event/stream` asks for: a start index, topics with their keys, a namespace. */
export interface SubscribeRequest {
  index: number;
  /** Topic (or "*") → keys (or "*"). */
  topics: ReadonlyMap<string, readonly string[]>;
  /** "*" for every namespace. */
  namespace: string;
}

/** An event as buffered: rendered once, filtered per subscription. */
interface BufferedEvent {
  topic: Topic;
  key: string;
  namespace: string;
  filterKeys: readonly string[];
  json: string;
}

interface BufferItem {
  index: number;
  events: BufferedEvent[];
}

interface Subscription {
  request: SubscribeRequest;
  send(frame: string): void;
  end(): void;
}

export class EventBroker {
  private readonly items: BufferItem[] = [];
  private readonly subscriptions = new Set<Subscription>();
  private closed = false;

  constructor(private readonly size: number = DEFAULT_EVENT_BUFFER_SIZE) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`event buffer size must be a positive integer, got ${size}`);
  }

  /** Buffers one write's events and delivers them to every subscription whose filter lets some through. */
  publish(index: number, events: readonly StreamEvent[]): void {
    // As Nomad's broker: a write without events takes no place in the buffer.
    if (this.closed || events.length === 0) return;
    const item: BufferItem = {
      index,
      events: events.map((event) => ({
        topic: event.Topic,
        key: event.Key,
        namespace: event.Namespace,
        filterKeys: event.FilterKeys ?? [],
        // Nomad's field order.
        json: JSON.stringify({ Topic: event.Topic, Type: event.Type, Key: event.Key, Namespace: event.Namespace, FilterKeys: event.FilterKeys, Index: index, Payload: event.Payload }),
      })),
    };
    this.items.push(item);
    if (this.items.length > this.size) this.items.shift();
    for (const subscription of this.subscriptions) deliver(subscription, item);
  }

  /**
   * Replays the buffer from the request's start index (Nomad's StartAtClosest: 0 or an index older than
   * the buffer starts at its oldest write, silently; one newer than every write starts at the newest),
   * then delivers new writes until unsubscribed or the broker closes (`end`). Returns the unsubscribe.
   */
  subscribe(request: SubscribeRequest, send: (frame: string) => void, end: () => void): () => void {
    if (this.closed) {
      end();
      return () => undefined;
    }
    const subscription: Subscription = { request, send, end };
    for (const item of this.items.slice(startPosition(this.items.map((buffered) => buffered.index), request.index))) deliver(subscription, item);
    this.subscriptions.add(subscription);
    return () => {
      this.subscriptions.delete(subscription);
    };
  }

  /** The state is dropped: every subscription ends. */
  close(): void {
    this.closed = true;
    const ending = [...this.subscriptions];
    this.subscriptions.clear();
    for (const subscription of ending) subscription.end();
  }
}

/** Where a subscription starting at `index` starts in a buffer holding writes of `indexes` (ascending). */
export function startPosition(indexes: readonly number[], index: number): number {
  if (index === 0) return 0;
  const at = indexes.findIndex((item) => item >= index);
  return at >= 0 ? at : Math.max(0, indexes.length - 1);
}

function deliver(subscription: Subscription, item: BufferItem): void {
  const events = item.events.filter((event) => matches(subscription.request, event));
  if (events.length > 0) subscription.send(`{"Index":${item.index},"Events":[${events.map((event) => event.json).join(',')}]}`);
}

/** Nomad's subscription filter: the namespace (events without one always pass), then topic keys. */
function matches(request: SubscribeRequest, event: BufferedEvent): boolean {
  if (request.namespace !== '*' && event.namespace !== '' && event.namespace !== request.namespace) return false;
  const all = request.topics.get('*') ?? [];
  if (all.length === 1 && all[0] === '*') return true;
  const keys = [...all, ...(request.topics.get(event.topic) ?? [])];
  if (keys.length === 1 && keys[0] === '*') return true;
  return keys.some((key) => key === event.key || event.filterKeys.includes(key));
}

/** The subscription a stream request asks for, refused as Nomad's HTTP agent refuses it. */
export function parseSubscribeRequest(query: URLSearchParams): SubscribeRequest {
  const text = query.get('index') || '0';
  // strconv.Atoi; a negative index (which Nomad would take as a huge unsigned one) is refused here.
  if (!/^\+?\d+$/.test(text)) throw new HttpError(400, `Unable to parse index: strconv.Atoi: parsing ${JSON.stringify(text)}: invalid syntax`);
  const topics = new Map<string, string[]>();
  const raw = query.getAll('topic');
  if (raw.length === 0) topics.set('*', ['*']);
  for (const topic of raw) {
    const parts = topic.split(':');
    if (parts.length > 2) throw new HttpError(400, `Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: ${topic}`);
    const [name = '', key = '*'] = parts;
    topics.set(name, [...(topics.get(name) ?? []), key]);
  }
  return { index: Number(text), topics, namespace: query.get('namespace') || 'default' };
}
