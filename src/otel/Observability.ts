/**
 * A ready layer that exports the pool's traces and metrics over OTLP/HTTP
 * (to Jaeger, an OpenTelemetry Collector, ...) through `@effect/opentelemetry`,
 * and can serve the metrics for Prometheus to scrape.
 *
 * ```ts
 * import { Observability } from "@meshhook/pool/otel"
 *
 * program.pipe(Effect.provide(PoolLive), Effect.provide(Observability.layerConfig()))
 * ```
 *
 * It lives in `@meshhook/pool/otel` so that the OpenTelemetry SDK is only
 * loaded by those who export; the pool records its metrics and spans through
 * Effect either way.
 *
 * @since 0.1.0
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as OtelTracer from "@effect/opentelemetry/OtelTracer"
import type * as Resource from "@effect/opentelemetry/Resource"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { type MetricReader, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import * as Otel from "@opentelemetry/api"
import { AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler } from "@opentelemetry/sdk-trace-base"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import { PoolConfigError } from "../PoolError.ts"

/**
 * What to export, and where.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `service.name` of the resource. Default `meshhook-worker`. */
  readonly serviceName?: string | undefined
  /** The OTLP/HTTP endpoint; `/v1/traces` and `/v1/metrics` are added. Default `http://localhost:4318`. */
  readonly endpoint?: string | undefined
  /** Export traces. Default true. */
  readonly traces?: boolean | undefined
  /** Share of new traces to keep, from 0 to 1; child spans follow their parent. Default 1. */
  readonly traceSampleRatio?: number | undefined
  /** Export metrics over OTLP. Default true. */
  readonly metrics?: boolean | undefined
  /** How often metrics are exported, in ms. Default 10,000. */
  readonly metricsIntervalMillis?: number | undefined
  /** Also serve metrics at `http://<prometheusHost>:<port>/metrics` for Prometheus. Off by default. */
  readonly prometheusPort?: number | undefined
  /** The address the Prometheus endpoint listens on. Default `127.0.0.1`. */
  readonly prometheusHost?: string | undefined
  /**
   * Make Effect's current span the active OpenTelemetry context while each
   * step of an Effect runs, so that libraries instrumented with the
   * OpenTelemetry API (HTTP clients, ...) parent their spans under it. Off by
   * default: it wraps every step of every traced fiber in a context switch,
   * which halved the pool's throughput in the telemetry benchmark.
   */
  readonly otelContext?: boolean | undefined
}

const defaultEndpoint = "http://localhost:4318"

/**
 * Longest one export may take, retries included. The exporters' own default
 * (10 s) held a closing program that long per signal when no collector
 * answered; telemetry that cannot be sent in this time is dropped.
 */
const exportTimeoutMillis = 3_000

/** Runs a log line with the services of the program that built the layer (its logger). */
type Log = (line: Effect.Effect<void>) => void

/** What an exporter reports an export with: `code` 0 for success. */
interface ExportResult {
  readonly code: number
  readonly error?: Error | undefined
}

/**
 * `exporter`, with its failed exports made visible: a warning when exports
 * start failing (naming where they go and why), and a note when they
 * succeed again. Without it, telemetry is lost without a word when nothing
 * listens at the endpoint. A failed batch is reported here and dropped: the
 * SDK is told it is done, so that closing the program does not fail on
 * telemetry it could not send.
 */
const reported = <E extends { export(items: never, done: (result: ExportResult) => void): void }>(
  exporter: E,
  what: string,
  url: string,
  log: Log
): E => {
  let failing = false
  const send = exporter.export.bind(exporter) as (items: unknown, done: (result: ExportResult) => void) => void
  ;(exporter as unknown as { export: (items: unknown, done: (result: ExportResult) => void) => void }).export = (items, done) =>
    send(items, (result) => {
      const failed = result.code !== 0
      if (failed !== failing) {
        failing = failed
        log(
          failed
            ? Effect.logWarning(`Exporting ${what} to ${url} failed: ${result.error?.message ?? "no reason given"}; they are dropped until it works`)
            : Effect.logInfo(`Exporting ${what} to ${url} works again`)
        )
      }
      done({ code: 0 })
    })
  return exporter
}

/** The metric readers `options` ask for. */
const metricReadersOf = (endpoint: string, options: Options, log: Log): Array<MetricReader> => {
  const readers: Array<MetricReader> = []
  if (options.metrics !== false) {
    readers.push(
      new PeriodicExportingMetricReader({
        exporter: reported(
          new OTLPMetricExporter({ url: `${endpoint}/v1/metrics`, timeoutMillis: exportTimeoutMillis }),
          "metrics",
          `${endpoint}/v1/metrics`,
          log
        ),
        exportIntervalMillis: options.metricsIntervalMillis ?? 10_000
      })
    )
  }
  if (options.prometheusPort !== undefined) {
    readers.push(new PrometheusExporter({ port: options.prometheusPort, host: options.prometheusHost ?? "127.0.0.1" }))
  }
  return readers
}

/** The options Effect gives a tracer for a new span. */
type SpanOptions = Parameters<Tracer.Tracer["span"]>[0]

/**
 * Whether `options` start a trace: no parent, neither in Effect nor in the
 * active OpenTelemetry context (an instrumented HTTP server's span, say).
 */
const startsTrace = (options: SpanOptions): boolean =>
  options.root || (Option.isNone(options.parent) && Otel.trace.getSpan(Otel.context.active()) === undefined)

/**
 * Effect's tracer on the OpenTelemetry SDK, sampling before the SDK sees a
 * span: a trace left out stays in plain Effect spans, which cost little, and
 * only kept traces pay for SDK spans. New traces are kept with probability
 * `ratio`; a span follows its parent's decision (Effect passes it down).
 *
 * With `otelContext` each step of a traced fiber also runs with its span as
 * the active OpenTelemetry context (see {@link Options.otelContext}).
 */
const tracerLayer = (ratio: number, otelContext: boolean): Layer.Layer<never, never, OtelTracer.OtelTracer> =>
  Layer.effect(
    Tracer.Tracer,
    Effect.map(OtelTracer.make, (sdk) => {
      const span = (options: SpanOptions): Tracer.Span =>
        options.sampled && (ratio >= 1 || !startsTrace(options) || Math.random() < ratio)
          ? sdk.span(options)
          : new Tracer.NativeSpan({ ...options, sampled: false })
      return Tracer.make(otelContext ? { span, context: sdk.context } : { span })
    })
  )

/** The first option out of range, as a `PoolConfigError`. */
const invalidOption = (options: Options): PoolConfigError | undefined => {
  const invalid = (field: string, value: unknown, reason: string) =>
    new PoolConfigError({ field, value: String(value), reason })
  const ratio = options.traceSampleRatio
  if (ratio !== undefined && !(ratio >= 0 && ratio <= 1)) return invalid("traceSampleRatio", ratio, "must be from 0 to 1")
  const interval = options.metricsIntervalMillis
  if (interval !== undefined && !(Number.isSafeInteger(interval) && interval > 0)) {
    return invalid("metricsIntervalMillis", interval, "must be a whole number of milliseconds above 0")
  }
  const port = options.prometheusPort
  if (port !== undefined && !(Number.isSafeInteger(port) && port >= 0 && port <= 65_535)) {
    return invalid("prometheusPort", port, "must be a port number from 0 to 65535")
  }
  if (options.endpoint !== undefined && !URL.canParse(options.endpoint)) {
    return invalid("endpoint", "<not a URL>", "must be an http(s) URL")
  }
  return undefined
}

/** Traces and metrics as `options` say. */
const layerOf = (options: Options): Layer.Layer<Resource.Resource, PoolConfigError> => {
  const error = invalidOption(options)
  if (error !== undefined) return Layer.effectContext(Effect.fail(error))
  return Layer.unwrap(Effect.map(Effect.context<never>(), (context) => {
    const run = Effect.runForkWith(context)
    return exporting(options, (line) => void run(line))
  }))
}

/** The layers of {@link layerOf}, for valid options, reporting export failures with `log`. */
const exporting = (options: Options, log: Log): Layer.Layer<Resource.Resource> => {
  const endpoint = (options.endpoint ?? defaultEndpoint).replace(/\/+$/, "")
  const sdk = NodeSdk.layer(() => ({
    resource: { serviceName: options.serviceName ?? "meshhook-worker" },
    metricReader: metricReadersOf(endpoint, options, log)
  }))
  if (options.traces === false) return sdk
  const traces = tracerLayer(options.traceSampleRatio ?? 1, options.otelContext === true).pipe(
    Layer.provide(OtelTracer.layerTracer),
    Layer.provide(
      NodeSdk.layerTracerProvider(
        new BatchSpanProcessor(
          reported(
            new OTLPTraceExporter({ url: `${endpoint}/v1/traces`, timeoutMillis: exportTimeoutMillis }),
            "traces",
            `${endpoint}/v1/traces`,
            log
          ),
          { exportTimeoutMillis }
        ),
        {
          // The tracer has sampled new traces already; the SDK keeps what it is given.
          sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() })
        }
      )
    )
  )
  return Layer.provideMerge(traces, sdk)
}

/**
 * Exports traces and metrics as `options` say. An option out of range fails
 * the layer with a `PoolConfigError` naming it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Resource.Resource, PoolConfigError> => layerOf(options)

/**
 * The environment variables {@link layerConfig} reads.
 *
 * @since 0.1.0
 * @category config
 */
export const environment = {
  serviceName: "OTEL_SERVICE_NAME",
  endpoint: "OTEL_EXPORTER_OTLP_ENDPOINT",
  traceSampleRatio: "PGPOOL_TRACE_SAMPLE_RATIO",
  metricsIntervalMillis: "OTEL_METRIC_EXPORT_INTERVAL",
  prometheusPort: "PGPOOL_PROMETHEUS_PORT",
  otelContext: "PGPOOL_OTEL_CONTEXT"
} as const

/**
 * {@link layer}, with its options read from Effect `Config` (the environment
 * by default; see {@link environment}), `overrides` winning.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  overrides: Options = {}
): Layer.Layer<Resource.Resource, Config.ConfigError | PoolConfigError> =>
  Layer.unwrap(
    Effect.gen(function*() {
      const read = yield* Config.all({
        serviceName: Config.option(Config.String(environment.serviceName)),
        endpoint: Config.option(Config.String(environment.endpoint)),
        traceSampleRatio: Config.option(Config.Number(environment.traceSampleRatio)),
        metricsIntervalMillis: Config.option(Config.Number(environment.metricsIntervalMillis)),
        prometheusPort: Config.option(Config.Port(environment.prometheusPort)),
        otelContext: Config.option(Config.Boolean(environment.otelContext))
      })
      const found: Record<string, unknown> = {}
      for (const [key, value] of Object.entries(read) as Array<[string, Option.Option<unknown>]>) {
        if (Option.isSome(value)) found[key] = value.value
      }
      return layerOf({ ...found, ...overrides })
    })
  )
