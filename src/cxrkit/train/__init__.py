def __getattr__(name: str) -> object:
    # the old flat module cxrkit.train (0.1) lived at this name: its names resolve for one release
    from cxrkit._legacy import moved_attribute

    return moved_attribute(__name__, name)
