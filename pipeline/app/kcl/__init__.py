"""KCL MultiLangDaemon mode: holds the properties template (``shardhouse.properties.template``).

The child entry point the daemon starts per shard is :mod:`pipeline.app.kcl_entry`; the launcher that
renders the properties and builds the ``java`` command is :mod:`pipeline.app.kcl_daemon`. The
diagnostic processors (``recorder``, ``noop``) are shared with the native runtime:
:mod:`pipeline.consumer.diagnostic`.
"""
