"""``nextbest simulate``: realistic omnichannel journeys sent to ``events.<channel>``."""
