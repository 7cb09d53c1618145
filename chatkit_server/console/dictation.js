// Dictation: the microphone records with MediaRecorder, the clip goes to the
// server as `input.transcribe` (as ChatKit's composer sends it), and the text
// that comes back lands in the composer for the user to read before sending.

import { transcribe } from "./api.js";

// A clip is sent inline in one JSON request: past this it stops by itself
// (a couple of minutes of Opus stays far below the server's default limits).
const MAX_SECONDS = 120;

/** Whether this page can record at all (a plain-http page on another host cannot). */
export function canRecord() {
  return Boolean(navigator.mediaDevices?.getUserMedia) && typeof MediaRecorder !== "undefined";
}

/**
 * Wire the microphone `button`: a click starts recording, the next one stops
 * it and transcribes. `onText(text)` gets the transcript, `onError(error)`
 * anything that failed (no microphone, refused, the server's error), and
 * `retry(work)` runs `work` so that a 401 can sign in and run it again.
 */
export function wireDictation(button, { onText, onError, retry }) {
  let recorder = null;
  let timer = 0;

  const show = (mode) => {
    button.dataset.state = mode;
    button.setAttribute("aria-pressed", String(mode === "recording"));
    button.setAttribute("aria-label", mode === "recording" ? "Stop dictation" : mode === "transcribing" ? "Transcribing" : "Dictate");
    // Asking for the microphone or transcribing: a second click would start another clip.
    button.disabled = mode === "starting" || mode === "transcribing";
  };

  async function start() {
    let stream;
    show("starting");
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      show("idle");
      onError(new Error(`The microphone is not available (${error.message || error.name}).`));
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) chunks.push(event.data);
    });
    recorder.addEventListener("stop", () => {
      clearTimeout(timer);
      for (const track of stream.getTracks()) track.stop();
      const clip = new Blob(chunks, { type: recorder.mimeType || chunks[0]?.type || "audio/webm" });
      recorder = null;
      if (!clip.size) {
        show("idle");
        onError(new Error("Nothing was recorded."));
        return;
      }
      show("transcribing");
      retry(async () => {
        const answer = await transcribe(clip);
        if (answer?.text) onText(answer.text);
      }).finally(() => show("idle"));
    });
    recorder.start();
    timer = setTimeout(() => recorder?.stop(), MAX_SECONDS * 1000);
    show("recording");
  }

  button.addEventListener("click", () => {
    if (recorder) recorder.stop();
    else start();
  });
  show("idle");
}
