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
import type * as Resource from "@effect/opentelemetry/Resource"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { type MetricReader, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import {
  BatchSpanProcessor,
  ParentBasedSampler,
  type SpanProcessor,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"

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
}

const defaultEndpoint = "http://localhost:4318"

/** The SDK's configuration for `options`. */
const configurationOf = (options: Options): NodeSdk.Configuration => {
  const endpoint = (options.endpoint ?? defaultEndpoint).replace(/\/+$/, "")
  const spanProcessor: Array<SpanProcessor> = options.traces === false
    ? []
    : [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${endpoint}/v1/traces` }))]
  const metricReader: Array<MetricReader> = []
  if (options.metrics !== false) {
    metricReader.push(
      new PeriodicExportingMetricReader({
        exporter: new OTLPMetricExporter({ url: `${endpoint}/v1/metrics` }),
        exportIntervalMillis: options.metricsIntervalMillis ?? 10_000
      })
    )
  }
  if (options.prometheusPort !== undefined) {
    metricReader.push(new PrometheusExporter({ port: options.prometheusPort, host: options.prometheusHost ?? "127.0.0.1" }))
  }
  return {
    resource: { serviceName: options.serviceName ?? "meshhook-worker" },
    spanProcessor,
    metricReader,
    tracerConfig: {
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(options.traceSampleRatio ?? 1) })
    }
  }
}

/**
 * Exports traces and metrics as `options` say.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Resource.Resource> =>
  NodeSdk.layer(() => configurationOf(options))

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
  prometheusPort: "PGPOOL_PROMETHEUS_PORT"
} as const

/**
 * {@link layer}, with its options read from Effect `Config` (the environment
 * by default; see {@link environment}), `overrides` winning.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (overrides: Options = {}): Layer.Layer<Resource.Resource, Config.ConfigError> =>
  NodeSdk.layer(
    Effect.gen(function*() {
      const read = yield* Config.all({
        serviceName: Config.option(Config.String(environment.serviceName)),
        endpoint: Config.option(Config.String(environment.endpoint)),
        traceSampleRatio: Config.option(Config.Number(environment.traceSampleRatio)),
        metricsIntervalMillis: Config.option(Config.Number(environment.metricsIntervalMillis)),
        prometheusPort: Config.option(Config.Port(environment.prometheusPort))
      })
      const found: Record<string, unknown> = {}
      for (const [key, value] of Object.entries(read) as Array<[string, Option.Option<unknown>]>) {
        if (Option.isSome(value)) found[key] = value.value
      }
      const options: Options = { ...found, ...overrides }
      return configurationOf(options)
    })
  )
