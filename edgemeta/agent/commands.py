"""Board side of remote commands: enroll, forget, classify, report, rebirth, rollback.

The reporter receives :class:`~edgemeta.fleet.schema.Command` messages on
``edgemeta/v1/<fleet>/<device>/cmd``, decodes them and calls a :class:`CommandHandler` off paho's
network thread; whatever the handler returns becomes the :class:`~edgemeta.fleet.schema.Reply`.

Every command is checked completely before anything changes: argument names and types, the
label, the number and size of the images, and every image is decoded. A refused command leaves
the classes, the state file and the current model exactly as they were (all-or-nothing), and the
reply says what was wrong and what was expected. The handler never raises into the reporter.

Images travel as base64 text of PNG or JPEG bytes: ``{"images": ["iVBORw0KGgo...", ...]}``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgemeta.errors import EdgemetaError, FlashError, FleetError, InputError
from edgemeta.runtime.preprocess import image_to_array, to_uint8_image
from edgemeta.runtime.prototypes import PrototypeStore

if TYPE_CHECKING:
    from edgemeta.agent.stats import LatencyWindow
    from edgemeta.bundle import BoardHome
    from edgemeta.fleet.schema import Birth, Command, Telemetry
    from edgemeta.runtime.classifier import FewShotClassifier

__all__ = [
    "ARGUMENTS",
    "IMAGE_FORMATS",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_TOTAL_PIXELS",
    "CommandHandler",
    "CommandResult",
    "decode_images",
]

log = logging.getLogger(__name__)

# A few-shot class needs a handful of examples; 32 per message keeps a command well under the
# 1 MiB MQTT payload cap and the board's decode time short.
MAX_IMAGES = 32
# Encoded size of one image (after base64 decoding). A 28x28 glyph is ~1 KiB, a camera crop tens.
MAX_IMAGE_BYTES = 256 * 1024
# A small compressed file can still decode to gigabytes (a decompression bomb): the size in the
# header is checked before any pixel is decoded, per image and over the whole command, so one
# command never holds more than ~48 MiB of RGB pixels on a board with 512 MiB of RAM.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_TOTAL_PIXELS = 4096 * 4096
# Only what a camera or a drawing app produces; Pillow's rarer decoders stay unreachable remotely.
IMAGE_FORMATS = ("PNG", "JPEG")
# base64 turns 3 bytes into 4 characters: reject a too-long string before decoding it at all.
_MAX_B64_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4

# Accepted arguments per command: name -> required. Unknown names are refused, not ignored, so a
# typo ("lable") is an error instead of a silent default.
ARGUMENTS: dict[str, dict[str, bool]] = {
    "enroll": {"label": True, "images": True},
    "forget": {"label": True},
    "classify": {"images": True},
    "report": {},
    "rebirth": {},
    "rollback": {},
}

CommandResult = tuple[bool, dict[str, Any] | None, str | None]


class Reporting(Protocol):
    """What the handler needs from the agent's reporter (a :class:`DeviceReporter`)."""

    def publish_now(self) -> Telemetry: ...

    def publish_birth(self) -> Birth: ...


class CommandTarget(Protocol):
    """What the handler needs from the agent (a :class:`~edgemeta.agent.DeviceAgent`)."""

    home: BoardHome
    classifier: FewShotClassifier
    latency: LatencyWindow

    @property
    def reporter(self) -> Reporting | None: ...


class _Refused(EdgemetaError):
    """A command that was checked and refused before anything changed."""


# --- argument checking ----------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_arguments(command: str, args: object) -> dict[str, Any]:
    """Check argument names of one command; types are checked by each command.

    Raises:
        _Refused: Unknown command, args not an object, an unknown or a missing argument.
    """
    if command not in ARGUMENTS:
        raise _Refused(f"unknown command {command!r}: expected one of {', '.join(ARGUMENTS)}")
    if not isinstance(args, dict):
        raise _Refused(f"args must be a JSON object, got {_type_name(args)}")
    spec = ARGUMENTS[command]
    expected = ", ".join(spec) if spec else "no arguments"
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise _Refused(f"unknown argument(s) {', '.join(map(repr, unknown))}: {command} takes "
                       f"{expected}")
    missing = [name for name, required in spec.items() if required and name not in args]
    if missing:
        raise _Refused(f"missing argument(s) {', '.join(map(repr, missing))}: {command} takes "
                       f"{expected}")
    return args


def _check_label(value: object) -> str:
    try:
        return PrototypeStore.validate_label(value)
    except InputError as exc:
        raise _Refused(f"bad 'label': {exc}") from None


def decode_images(values: object) -> list[np.ndarray]:
    """Decode the ``images`` argument: a list of base64 PNG/JPEG strings -> uint8 arrays.

    All images are decoded before the caller changes anything, so one bad image refuses the whole
    command.

    Raises:
        _Refused: Not a list, empty or too many, not base64, too large, too many pixels, or not a
            PNG/JPEG Pillow can read. The message names the image by its index.
    """
    if not isinstance(values, list):
        raise _Refused(f"'images' must be a list of base64 strings, got {_type_name(values)}")
    if not 1 <= len(values) <= MAX_IMAGES:
        raise _Refused(f"'images' has {len(values)} images: expected 1 to {MAX_IMAGES}")
    # Cheap checks on every image first: a bad last image is refused before decoding the others.
    blobs = [_b64_image(v, i) for i, v in enumerate(values)]
    total = 0
    out: list[np.ndarray] = []
    for i, data in enumerate(blobs):
        arr, pixels = _decode_image(data, i, MAX_TOTAL_PIXELS - total)
        total += pixels
        out.append(arr)
    return out


def _b64_image(value: object, index: int) -> bytes:
    if not isinstance(value, str):
        raise _Refused(f"images[{index}] must be a base64 string, got {_type_name(value)}")
    if len(value) > _MAX_B64_CHARS:
        raise _Refused(f"images[{index}] is {len(value)} base64 characters: expected at most "
                       f"{_MAX_B64_CHARS} ({MAX_IMAGE_BYTES} bytes decoded)")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Refused(f"images[{index}] is not valid base64 ({exc}): expected standard base64 "
                       "of PNG or JPEG bytes") from None
    if not data:
        raise _Refused(f"images[{index}] is empty: expected PNG or JPEG bytes")
    if len(data) > MAX_IMAGE_BYTES:
        raise _Refused(f"images[{index}] is {len(data)} bytes: expected at most {MAX_IMAGE_BYTES}")
    return data


def _decode_image(data: bytes, index: int, budget: int) -> tuple[np.ndarray, int]:
    """Decode one image whose pixel count fits ``budget``; returns (array, pixel count)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            pixels = width * height
            # Checked from the header, before img.load() allocates anything.
            if pixels > MAX_IMAGE_PIXELS:
                raise _Refused(f"images[{index}] is {width}x{height} pixels: expected at most "
                               f"{MAX_IMAGE_PIXELS} pixels per image")
            if pixels > budget:
                raise _Refused(f"images[{index}] ({width}x{height}) brings the command over "
                               f"{MAX_TOTAL_PIXELS} decoded pixels: send fewer or smaller images")
            img.load()
            arr = image_to_array(img)
    except _Refused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as exc:
        raise _Refused(f"images[{index}] is not a readable image ({exc}): expected PNG or JPEG "
                       "bytes") from None
    try:
        return to_uint8_image(arr), pixels
    except InputError as exc:
        raise _Refused(f"images[{index}]: {exc}") from None


# --- the handler ----------------------------------------------------------------------------------


class CommandHandler:
    """Carries out remote commands on one agent; an instance is the reporter's ``command_handler``.

    Args:
        agent: The agent whose classifier, home, latency window and reporter are used. Its
            ``classifier`` attribute is read on every command (an over-the-air update or a
            rollback replaces it).
        lock: The agent's lock; every change (and every classification) happens under it, so a
            command never interleaves with the inbox loop or an update.
        backend: Interpreter backend to load a rolled-back model with (None: the default).
        num_threads: Interpreter threads for a rolled-back model.
        on_model_changed: Called (outside the lock) after a rollback switched the model; the
            agent publishes a new birth there. None: publish it through ``agent.reporter``.
    """

    def __init__(self, agent: CommandTarget, lock: threading.RLock | None = None, *,
                 backend: str | None = None, num_threads: int = 1,
                 on_model_changed: Callable[[], None] | None = None) -> None:
        self._agent = agent
        self._lock = lock if lock is not None else threading.RLock()
        self._backend = backend
        self._num_threads = num_threads
        self._on_model_changed = on_model_changed
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "enroll": self.enroll, "forget": self.forget, "classify": self.classify,
            "report": self.report, "rebirth": self.rebirth, "rollback": self.rollback,
        }

    def __call__(self, cmd: Command) -> CommandResult:
        """Carry out one command; returns ``(ok, result, error)`` and never raises.

        Args:
            cmd: A decoded command (``id``, ``command``, ``args``).

        Returns:
            ``(True, result, None)`` when done, ``(False, None, message)`` when refused or failed
            (a refused command changed nothing).
        """
        command = getattr(cmd, "command", None)
        try:
            _check_size(cmd)
            if not isinstance(command, str) or command not in self._handlers:
                raise _Refused(f"unknown command {command!r}: expected one of "
                               f"{', '.join(ARGUMENTS)}")
            handler = self._handlers[command]
            return True, handler(check_arguments(command, getattr(cmd, "args", None))), None
        except EdgemetaError as exc:
            log.warning("command %s (%s) refused: %s", getattr(cmd, "id", "?"), command, exc)
            return False, None, f"{command}: {exc}"
        except Exception as exc:  # a bug must become a reply, never kill the reporter's thread
            log.exception("command %s (%s) failed", getattr(cmd, "id", "?"), command)
            return False, None, f"{command}: internal error on the device: {exc!r}"

    # --- commands ---------------------------------------------------------------------------------

    def enroll(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"label": str, "images": [b64, ...]}`` -> ``{"label", "count", "n_classes"}``.

        Adds the images to the label (new or existing) and saves the state file, or changes
        nothing: the store is restored if embedding or saving fails half-way.
        """
        check_arguments("enroll", args)
        label = _check_label(args["label"])
        images = decode_images(args["images"])
        with self._lock:
            clf = self._agent.classifier
            with all_or_nothing(clf):
                count = clf.enroll(label, images)
                clf.save()  # persisted before the reply: a restart keeps what was acknowledged
            return {"label": label, "count": count, "n_classes": len(clf.labels)}

    def forget(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"label": str}`` -> ``{"label", "n_classes"}``; an unknown label is refused."""
        check_arguments("forget", args)
        label = _check_label(args["label"])
        with self._lock:
            clf = self._agent.classifier
            if label not in clf.labels:
                raise _Refused(f"label {label!r} is not enrolled: expected one of "
                               f"{_preview(clf.labels)}")
            with all_or_nothing(clf):
                clf.forget(label)
                clf.save()
            return {"label": label, "n_classes": len(clf.labels)}

    def classify(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"images": [b64, ...]}`` -> ``{"predictions": [{"label", "score"}], "latency_ms"}``.

        ``latency_ms`` is preprocessing + inference of the whole batch (not the base64/PNG
        decoding); each image also counts in the agent's latency telemetry.
        """
        check_arguments("classify", args)
        images = decode_images(args["images"])
        with self._lock:
            clf = self._agent.classifier
            if not clf.labels:
                raise _Refused("no classes are enrolled: expected an enroll command first")
            started = time.perf_counter()
            preds = clf.classify(images)
            elapsed = time.perf_counter() - started
            for _ in preds:
                self._agent.latency.add(elapsed / len(preds))
        return {
            "predictions": [{"label": p.label, "score": round(float(p.score), 4)} for p in preds],
            "latency_ms": round(elapsed * 1000.0, 3),
            "model_version": clf.manifest.version,
        }

    def report(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{}`` -> ``{"seq", "n"}``: publish telemetry now (normally done by the reporter)."""
        check_arguments("report", args)
        msg = self._reporter().publish_now()
        return {"seq": msg.seq, "n": msg.n}

    def rebirth(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{}`` -> ``{"bd_seq", "session"}``: publish the birth again (normally the reporter's)."""
        check_arguments("rebirth", args)
        msg = self._reporter().publish_birth()
        return {"bd_seq": msg.bd_seq, "session": msg.session}

    def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{}`` -> ``{"version", "previous"}``: make the previous model current and run it.

        Uses :func:`firmware_bridge.install.rollback` (refused when there is no previous version;
        nothing changes then). The rolled-back model is health-checked while loading; if it
        cannot start, the board rolls forward to the model it ran and the command fails.
        """
        from firmware_bridge.boot import start_classifier
        from firmware_bridge.install import rollback

        check_arguments("rollback", args)
        with self._lock:
            home = self._agent.home
            previous = home.current_version()
            target = rollback(home)  # FlashError (nothing changed) if there is nothing to go to
            started = start_classifier(home, backend=self._backend,
                                       num_threads=self._num_threads)
            self._agent.classifier = started.classifier
            if started.rolled_back:
                # start_classifier went back to `previous` by itself: the board runs what it ran.
                raise FlashError(f"rolled back to {target} but it cannot start, so {previous} "
                                 f"stays current: {started.rolled_back}")
            n_classes = len(started.classifier.labels)
        log.warning("rolled back from %s to %s by remote command", previous, target)
        self._announce_model()
        return {"version": target, "previous": previous, "n_classes": n_classes}

    # --- helpers ----------------------------------------------------------------------------------

    def _reporter(self) -> Reporting:
        reporter: Reporting | None = getattr(self._agent, "reporter", None)
        if reporter is None:
            raise _Refused("this agent has no reporter: expected a broker connection")
        return reporter

    def _announce_model(self) -> None:
        """Tell the fleet which model runs now; a broker hiccup must not fail the rollback."""
        try:
            if self._on_model_changed is not None:
                self._on_model_changed()
            else:
                reporter: Reporting | None = getattr(self._agent, "reporter", None)
                if reporter is not None:
                    reporter.publish_birth()
        except FleetError as exc:  # the next reconnect's birth carries the version anyway
            log.warning("birth after the rollback not acknowledged: %s", exc)


class all_or_nothing:
    """Context manager: restore the classifier's prototype store if the block raises.

    ``enroll`` updates the means before the example bank, and ``save`` can fail on a full card;
    restoring the copy keeps memory and the (atomically written) state file in agreement.
    """

    def __init__(self, clf: FewShotClassifier) -> None:
        self._clf = clf
        self._saved = copy.deepcopy(clf.store)

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        if exc_type is not None:
            self._clf.store = self._saved
        return False


def _check_size(cmd: object) -> None:
    """Refuse commands over the protocol's limit even when not coming through the reporter."""
    import json

    from edgemeta.fleet.schema import MAX_COMMAND_BYTES

    try:
        size = len(json.dumps(getattr(cmd, "args", None), separators=(",", ":"),
                              allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _Refused(f"args are not plain JSON ({exc}): expected strings, numbers, lists and "
                       "objects") from None
    if size > MAX_COMMAND_BYTES:
        raise _Refused(f"args are {size} bytes: expected at most {MAX_COMMAND_BYTES} per command")


def _preview(labels: list[str], limit: int = 10) -> str:
    if not labels:
        return "(none enrolled)"
    shown = ", ".join(repr(x) for x in labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")
