# The official OpenTelemetry Collector (contrib) image plus an empty /var/lib/otel
# owned by its user, 10001. compose.yaml mounts the `traces` volume there, and Docker
# gives a new, empty named volume the ownership of the image's directory; without
# this the volume is root's and the collector's file exporter cannot write to it.
# The image is distroless (no shell), hence a COPY rather than a RUN.
ARG COLLECTOR_IMAGE=otel/opentelemetry-collector-contrib:0.150.0
FROM ${COLLECTOR_IMAGE}
COPY --chown=10001:10001 var-lib/ /var/lib/
