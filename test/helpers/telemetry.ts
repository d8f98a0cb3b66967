// OpenTelemetry captured in memory with the SDK's own exporters: spans as they end, metrics on demand.
import {
  AggregationTemporality,
  type DataPoint,
  type Histogram,
  MeterProvider,
  MetricReader,
} from '@opentelemetry/sdk-metrics';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';

/** A reader the test collects from when it asks (no timer). */
class OnDemandReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

export interface CapturedTelemetry {
  tracerProvider: BasicTracerProvider;
  meterProvider: MeterProvider;
  spans(): ReadableSpan[];
  /** The data points of a histogram, by attributes, as collected now. */
  histogram(name: string): DataPoint<Histogram>[];
  collect(): Promise<void>;
  close(): Promise<void>;
}

export function captureTelemetry(): CapturedTelemetry {
  const exporter = new InMemorySpanExporter();
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const reader = new OnDemandReader({
    aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE,
  });
  const meterProvider = new MeterProvider({ readers: [reader] });
  let collected: Awaited<ReturnType<MetricReader['collect']>>['resourceMetrics'] | undefined;
  return {
    tracerProvider,
    meterProvider,
    spans: () => exporter.getFinishedSpans(),
    async collect() {
      collected = (await reader.collect()).resourceMetrics;
    },
    histogram(name) {
      const points: DataPoint<Histogram>[] = [];
      for (const scope of collected?.scopeMetrics ?? []) {
        for (const metric of scope.metrics) {
          if (metric.descriptor.name === name) points.push(...(metric.dataPoints as DataPoint<Histogram>[]));
        }
      }
      return points;
    },
    async close() {
      await Promise.all([tracerProvider.shutdown(), meterProvider.shutdown()]);
    },
  };
}
