# pegboard serve in a container. Build from the repository root:
#   docker build -t pegboard .                                        # CPU torch
#   docker build -t pegboard --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Run (model files are cached in the volume, so later starts download nothing):
#   docker run -p 8000:8000 -v pegboard-cache:/cache pegboard              # the packaged SmolLM2
#   docker run --gpus all -p 8000:8000 -v pegboard-cache:/cache pegboard Qwen/Qwen2.5-0.5B-Instruct
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch --index-url "$TORCH_INDEX"

WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ".[server]" && rm -rf /src

RUN useradd --create-home pegboard && mkdir /cache && chown pegboard /cache
USER pegboard
ENV PEGBOARD_CACHE=/cache/pegboard HF_HOME=/cache/hf
VOLUME /cache
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"

ENTRYPOINT ["pegboard", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["smollm2"]
