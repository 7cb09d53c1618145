/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The domain key registered with OpenAI for the deployed page's domain. */
  readonly VITE_CHATKIT_DOMAIN_KEY?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
