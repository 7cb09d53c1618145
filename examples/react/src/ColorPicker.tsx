import { useState } from "react";

/** The page's answer to the `pick_color` client tool: the model waits until the user picks. */
export function ColorPicker({
  hint,
  onAnswer,
}: {
  hint: string;
  onAnswer: (color: string | null) => void;
}) {
  const [color, setColor] = useState("#3b82f6");
  return (
    <aside className="picker" aria-label="Pick a color">
      <h2>The assistant asks for a color</h2>
      {hint && <p>For: {hint}</p>}
      <input type="color" value={color} onChange={(event) => setColor(event.target.value)} />
      <div className="buttons">
        <button type="button" onClick={() => onAnswer(color)}>
          Send {color}
        </button>
        <button type="button" onClick={() => onAnswer(null)}>
          Cancel
        </button>
      </div>
    </aside>
  );
}
