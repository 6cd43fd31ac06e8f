"""The ClientApp. It only parses, dispatches to the site handlers and encodes the reply.

Every message runs in a fresh process: the site is found from the SuperNode's node config
(``site-config="<path to site yaml>"``) or, in simulation, from the run config folder
``simulation-configs`` and the node's ``partition-id``. All state lives in the site's state folder.
Policy, budget and the egress guard are in the agent package installed at the site, not here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from agent.config import SiteConfig, load_site_config
from protocols import messages as m
from protocols.errors import ConfigError, MessageSchemaError
from protocols.tasks import Task

log = logging.getLogger(__name__)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _serve(msg, context, m.TrainInstruction)


@app.query("synthesize")
def synthesize(msg: Message, context: Context) -> Message:
    return _serve(msg, context, m.SynthesizeQuery)


@app.query("ksalsa")
def ksalsa(msg: Message, context: Context) -> Message:
    return _serve(msg, context, m.KsalsaQuery)


@app.query("status")
def status(msg: Message, context: Context) -> Message:
    return _serve(msg, context, m.StatusQuery)


def _serve(msg: Message, context: Context, expected: type[m.WireMessage]) -> Message:
    from agent.site_service import handle_ksalsa, handle_status, handle_synthesize, handle_train, refusal
    from agent.site_service.claims import ledger_signer
    from agent.site_service.engine import engine_for_task

    _limit_threads()
    site = site_config_for(context)
    try:
        request = m.from_recorddict(msg.content, expect=(expected,))
    except MessageSchemaError as exc:
        placeholder = m.StatusQuery(run_id="unknown", dataset_id="unknown")
        reply = refusal(site, placeholder, 0, exc)
    else:
        engine = engine_for_task(getattr(request.message, "task", Task.DPGAN))  # stylegan-dp or DP-GAN
        if expected is m.TrainInstruction:
            reply = handle_train(site, request, engine=engine, sign_claim=ledger_signer)
        elif expected is m.SynthesizeQuery:
            reply = handle_synthesize(site, request, engine=engine, sign_claim=ledger_signer)
        elif expected is m.KsalsaQuery:
            reply = handle_ksalsa(site, request)
        else:
            reply = handle_status(site, request, engine=engine)
    return Message(m.to_recorddict(reply), reply_to=msg)


def site_config_for(context: Context) -> SiteConfig:
    """The site config named by the node config (deployment) or the partition id (simulation).

    Raises
    ------
    ConfigError
        If neither is available or the file is invalid.
    """
    node_cfg = context.node_config
    if "site-config" in node_cfg:
        return load_site_config(Path(str(node_cfg["site-config"])))
    folder = context.run_config.get("simulation-configs")
    if folder and "partition-id" in node_cfg:
        configs = sorted(Path(str(folder)).glob("*.yaml"))
        index = int(node_cfg["partition-id"])
        if index >= len(configs):
            raise ConfigError(f"simulation node {index} has no site config: only {len(configs)} in the configs folder")
        return load_site_config(configs[index])
    raise ConfigError(
        "this SuperNode has no site config: start it with --node-config 'site-config=\"/path/site.yaml\"'"
    )


def _limit_threads() -> None:
    # Several torch processes share few cores (SuperNodes, one ClientApp per message): without this
    # their thread pools fight and training slows down 10-30x.
    if os.environ.get("OMP_NUM_THREADS"):
        try:
            import torch

            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        except (ImportError, ValueError):  # pragma: no cover
            pass
