/**
 * `@meshhook/pool/otel`: export the pool's telemetry with OpenTelemetry.
 *
 * @since 0.1.0
 */

/** The OTLP (and Prometheus) export layer. @since 0.1.0 */
export * as Observability from "./Observability.ts"
