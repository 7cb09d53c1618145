// thread.item.updated: how each kind of update changes the item it names.
// The item is changed in place; the caller redraws it.

/** Apply one `update` of a thread.item.updated event to `item`. */
export function applyUpdate(item, update) {
  switch (update.type) {
    case "assistant_message.content_part.added":
      item.content[update.content_index] = update.content;
      break;
    case "assistant_message.content_part.text_delta": {
      const part = (item.content[update.content_index] ??= { type: "output_text", text: "", annotations: [] });
      part.text += update.delta;
      break;
    }
    case "assistant_message.content_part.annotation_added":
      (item.content[update.content_index].annotations ??= [])[update.annotation_index] = update.annotation;
      break;
    case "assistant_message.content_part.done":
      item.content[update.content_index] = update.content;
      break;
    case "workflow.task.added":
    case "workflow.task.updated":
      item.workflow.tasks[update.task_index] = update.task;
      break;
    case "widget.root.updated":
      item.widget = update.widget;
      break;
    case "widget.component.updated":
      if (item.widget?.id === update.component_id) item.widget = update.component;
      else replaceComponent(item.widget, update.component_id, () => update.component);
      break;
    case "widget.streaming_text.value_delta":
      replaceComponent(item.widget, update.component_id, (component) => ({ ...component, value: (component.value ?? "") + update.delta }));
      break;
    case "generated_image.updated":
      item.image = update.image;
      break;
    default:
      console.warn("update not shown by the console:", update.type);
  }
}

function replaceComponent(node, id, replace) {
  if (!node || typeof node !== "object") return false;
  const children = Array.isArray(node.children) ? node.children : node.children ? [node.children] : [];
  for (let index = 0; index < children.length; index += 1) {
    if (children[index]?.id === id) {
      children[index] = replace(children[index]);
      if (!Array.isArray(node.children)) node.children = children[0];
      return true;
    }
    if (replaceComponent(children[index], id, replace)) return true;
  }
  return false;
}
