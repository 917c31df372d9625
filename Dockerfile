# alarmrelay engine image. Multi-stage: build a wheel, install it into a slim runtime as non-root.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocols ./protocols
COPY engine ./engine
COPY receivers ./receivers
COPY bench ./bench
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/alarmrelay alarmrelay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/alarmrelay.example.toml /etc/alarmrelay/alarmrelay.toml
USER alarmrelay
WORKDIR /var/lib/alarmrelay
ENV ALARMRELAY_DATA_DIR=/var/lib/alarmrelay
# DC-09 (TCP and UDP on one port), HTTP (metrics, health, admin API)
EXPOSE 10009/tcp 10009/udp 8080/tcp
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["alarmrelay"]
CMD ["serve", "--config", "/etc/alarmrelay/alarmrelay.toml"]
