# An image that runs any script of this project on the CPU (no rendering needed).
#   docker build -t offline-rl .
#   docker run --rm -v "$PWD/runs:/app/runs" offline-rl algorithms/td3_bc.py --dataset shipped/hopper-medium-replay
# It installs with .ci/install, the same steps CI performs (.ci/run), so the two stay identical.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
COPY .ci/install .ci/install
RUN bash .ci/install /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
COPY . .
ENTRYPOINT ["python"]
CMD ["algorithms/td3_bc.py", "--help"]
