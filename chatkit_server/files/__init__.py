"""Attachment bytes: where they are kept, what they are, and signed links to them.

- :class:`FileStorage`: the interface; :class:`LocalFileStorage` (a
  directory, the default) and :class:`~chatkit_server.files.database.DatabaseFileStorage`
  (rows of the server's database, for several replicas; import it from its
  module, which needs the store);
- :class:`Sniffer`: the type of an upload by its bytes;
- :class:`LinkSigner`: signed, expiring links to image previews and uploads.

No Starlette here: the HTTP layer streams request bodies in.
"""

from chatkit_server.files.links import LINK_SECONDS, LinkSigner
from chatkit_server.files.local import LocalFileStorage
from chatkit_server.files.sniff import Sniffer, allowed, effective_mime_type, is_image
from chatkit_server.files.storage import CHUNK_BYTES, FileStorage, check_file_id

__all__ = [
    "CHUNK_BYTES",
    "LINK_SECONDS",
    "FileStorage",
    "LinkSigner",
    "LocalFileStorage",
    "Sniffer",
    "allowed",
    "check_file_id",
    "effective_mime_type",
    "is_image",
]
