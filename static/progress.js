// A progress bar and its status line for a running job. The server counts scored prompts in
// chunks; between its reports the bar moves on the expected time (from the cost preview, then from
// the measured rate), never past the next report, and the line counts seconds and what is left.

const TICK_MS = 250;
const AHEAD = 0.15;

export class ProgressView {
  /** `bars` and `texts`: one or more progress elements and status lines showing the same job. */
  constructor(bars, texts, noun = "prompts") {
    this.bars = [bars].flat();
    this.texts = [texts].flat();
    this.noun = noun;
    this.timer = 0;
  }

  /** Starts the clock; `estimate` is the cost preview's seconds (or null). */
  start(label, estimate = null) {
    this.stop();
    this.t0 = performance.now();
    this.estimate = estimate > 0 ? estimate : null;
    this.p = null;
    this.label = label;
    this.setBar(0, 1);
    this.timer = setInterval(() => this.render(), TICK_MS);
    this.render();
  }

  update(p, label) {
    if (p && p.total > 0) {
      const seconds = this.elapsed();
      // The measured rate replaces the preview's estimate once some prompts are scored.
      if (p.done > 0 && p.done < p.total) this.estimate = (seconds * p.total) / p.done;
      this.p = p;
    }
    this.label = label;
    this.render();
  }

  /** Stops the clock and shows the final state. */
  finish(p, label) {
    this.stop();
    if (p && p.total > 0) {
      this.p = p;
      this.setBar(Math.min(p.done, p.total) / p.total, p.total);
    }
    this.say(label);
  }

  /** Shows a line without a running clock (not started, a failed request). */
  idle(label) {
    this.stop();
    this.p = null;
    this.setBar(0, 1);
    this.say(label);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = 0;
  }

  elapsed() {
    return (performance.now() - this.t0) / 1000;
  }

  setBar(fraction, total) {
    const percent = String(Math.floor(100 * Math.min(1, this.p ? this.p.done / this.p.total : 0)));
    for (const bar of this.bars) {
      bar.max = total;
      bar.value = fraction * total;
      bar.dataset.percent = percent;
    }
  }

  say(text) {
    for (const t of this.texts) t.textContent = text;
  }

  render() {
    const seconds = this.elapsed();
    const clock = `${seconds.toFixed(1)} s`;
    const p = this.p;
    const byTime = this.estimate ? Math.min(0.97, seconds / this.estimate) : 0;
    if (p) {
      const done = Math.min(p.done, p.total);
      const counted = done / p.total;
      // Between reports the bar may run ahead of the count on the expected time, a little.
      this.setBar(Math.max(counted, Math.min(byTime, counted + AHEAD)), p.total);
      const left = this.estimate && done < p.total ? ` · about ${Math.max(1, Math.round(this.estimate - seconds))} s left` : "";
      this.say(this.label || `Scored ${done} of ${p.total} ${this.noun} (${Math.floor((100 * done) / p.total)}%) · ${clock}${left}`);
    } else {
      this.setBar(byTime, 1);
      // Nothing counted and no time expected: a moving bar, not an empty one that looks stuck.
      if (!this.estimate) for (const bar of this.bars) bar.removeAttribute("value");
      const of = this.estimate ? ` of about ${Math.max(1, Math.round(this.estimate))} s` : "";
      this.say(`${this.label || "Preparing the prompts…"} ${clock}${of}`);
    }
  }
}

/** Swaps a run button and its Cancel; focus moves to the button that stays usable, never to <body>. */
export function setBusy(run, cancel, box, busy) {
  const from = busy ? run : cancel;
  const to = busy ? cancel : run;
  const hadFocus = document.activeElement === from;
  to.disabled = false;
  if (hadFocus) to.focus({ preventScroll: true });
  from.disabled = true;
  box?.classList.toggle("busy", busy);
}
